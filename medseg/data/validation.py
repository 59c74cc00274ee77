"""Checks every case once before training and reports all problems together, each naming its file."""

from __future__ import annotations

import numpy as np
from tqdm import tqdm

from medseg.data.formats import Case, DatasetSpec
from medseg.errors import MedsegError
from medseg.nifti import NiftiImage, read_voxels, same_grid


def _load(path, problems: list[str]) -> tuple[NiftiImage, np.ndarray] | tuple[None, None]:
    """Return the image and its voxels (a full read: truncated gzip streams fail here), or record why not."""
    try:
        return read_voxels(path)
    except MedsegError as err:
        problems.append(str(err))
        return None, None


def check_case(case: Case, num_channels: int, num_classes: int) -> list[str]:
    """Return the problems of one case (empty when it is usable), each starting with the file's path."""
    problems: list[str] = []
    images = [(path, *_load(path, problems)) for path in case.images]
    label, label_voxels = _load(case.label, problems)
    channels = 0
    for path, image, voxels in images:
        if image is None:
            continue
        if image.ndim not in (3, 4):
            problems.append(f"{path}: image must be 3D (or 4D with channels last), got shape {image.shape}")
            continue
        channels += image.shape[3] if image.ndim == 4 else 1
        if not np.isfinite(voxels).all():
            problems.append(f"{path}: image contains NaN or Inf values")
        if label is not None:
            if image.shape[:3] != label.shape[:3]:
                problems.append(f"{path}: image shape {image.shape[:3]} differs from label {case.label.name} shape {label.shape[:3]}")
            elif not same_grid(image, label):
                problems.append(f"{path}: image affine differs from the affine of label {case.label.name}")
    if channels and all(image is not None for _, image, _ in images) and channels != num_channels:
        problems.append(f"{case.images[0]}: image has {channels} channel(s), dataset.json declares {num_channels}")
    if label is not None:
        if not (label.ndim == 3 or (label.ndim == 4 and label.shape[3] == 1)):
            problems.append(f"{case.label}: label must be 3D, got shape {label.shape}")
        values = np.unique(label_voxels)
        undeclared = [v for v in values.tolist() if v != int(v) or not 0 <= v < num_classes]
        if undeclared:
            problems.append(f"{case.label}: label values {undeclared[:5]} are not declared classes 0..{num_classes - 1}")
    return problems


def validate_dataset(spec: DatasetSpec, show_progress: bool = True) -> None:
    """Raise MedsegError listing every problem in the dataset; return silently when all cases are usable."""
    problems: list[str] = []
    for case in tqdm(spec.cases, desc="Checking dataset", unit="case", disable=not show_progress, leave=False):
        problems += check_case(case, len(spec.channel_names), len(spec.class_names))
    if len(problems) == 1:
        raise MedsegError(problems[0])
    if problems:
        listing = "\n  ".join(problems)
        raise MedsegError(f"{len(problems)} problems in dataset {spec.root}:\n  {listing}")
