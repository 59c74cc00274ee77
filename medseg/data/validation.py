"""Checks every case once before training and reports all problems together, each naming its file.

The same pass records each clean case's fingerprint (``medseg.data.fingerprint``) and caches it by file
size and modification time, so a later start on an unchanged dataset reads no voxels. Cases are read in
parallel, one process per core.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from medseg.io import nifti
from medseg.data.fingerprint import CaseFingerprint, DatasetFingerprint, FingerprintCache, case_fingerprint, case_key
from medseg.data.formats import Case, DatasetSpec
from medseg.errors import MedsegError
from medseg.io.nifti import NiftiImage, same_grid


def _load(path, problems: list[str]) -> tuple[NiftiImage, np.ndarray] | tuple[None, None]:
    """Return the image and its voxels (a full read: truncated gzip streams fail here), or record why not
    (``nifti.read_voxels`` checks the header, geometry and voxels as every command does)."""
    try:
        return nifti.read_voxels(path)
    except MedsegError as err:
        problems.append(str(err))
        return None, None


def _label_values(voxels: np.ndarray) -> tuple[list, np.ndarray | None]:
    """Return the label's distinct values, sorted, and the voxels per value 0..max when they are all non-negative integers."""
    if np.issubdtype(voxels.dtype, np.integer) and voxels.size and voxels.min() >= 0:
        counts = np.bincount(voxels.ravel())
        return np.flatnonzero(counts).tolist(), counts
    return np.unique(voxels).tolist(), None


def inspect_case(case: Case, num_channels: int, num_classes: int) -> tuple[list[str], CaseFingerprint | None]:
    """Return the problems of one case, each starting with the file's path, and its fingerprint when it has none."""
    problems: list[str] = []
    images = [(path, *_load(path, problems)) for path in case.images]
    label, label_voxels = _load(case.label, problems)
    channels = 0
    for path, image, _ in images:
        if image is None:
            continue
        if image.ndim not in (3, 4):
            problems.append(f"{path}: image must be 3D (or 4D with channels last), got shape {image.shape}")
            continue
        channels += image.shape[3] if image.ndim == 4 else 1
        if label is not None:
            if image.shape[:3] != label.shape[:3]:
                problems.append(f"{path}: image shape {image.shape[:3]} differs from label {case.label.name} shape {label.shape[:3]}")
            elif not same_grid(image, label):
                problems.append(f"{path}: image affine differs from the affine of label {case.label.name}")
    if channels and all(image is not None for _, image, _ in images) and channels != num_channels:
        problems.append(f"{case.images[0]}: image has {channels} channel(s), dataset.json declares {num_channels}")
    counts = None
    if label is not None:
        if not (label.ndim == 3 or (label.ndim == 4 and label.shape[3] == 1)):
            problems.append(f"{case.label}: label must be 3D, got shape {label.shape}")
        values, counts = _label_values(label_voxels)
        undeclared = [v for v in values if v != int(v) or not 0 <= v < num_classes]
        if undeclared:
            problems.append(f"{case.label}: label values {undeclared[:5]} are not declared classes 0..{num_classes - 1}")
    if problems:
        return problems, None
    if counts is None:
        counts = [int((label_voxels == value).sum()) for value in range(num_classes)]
    class_voxels = [int(counts[v]) if v < len(counts) else 0 for v in range(num_classes)]
    return [], case_fingerprint(case, label.affine, [voxels for _, _, voxels in images], label_voxels, class_voxels)


def check_case(case: Case, num_channels: int, num_classes: int) -> list[str]:
    """Return the problems of one case (empty when it is usable), each starting with the file's path."""
    return inspect_case(case, num_channels, num_classes)[0]


def _inspect_all(cases: list[Case], num_channels: int, num_classes: int, workers: int, show_progress: bool):
    """Yield ``inspect_case`` of each case in order, in ``workers`` processes when there is more than one."""
    progress = {"desc": "Checking dataset", "unit": "case", "disable": not show_progress, "leave": False, "total": len(cases)}
    if workers <= 1 or len(cases) <= 1:
        yield from tqdm((inspect_case(case, num_channels, num_classes) for case in cases), **progress)
        return
    # forked workers run only numpy and nibabel, as DataLoader workers do; spawn would re-run an unguarded user script
    with ProcessPoolExecutor(min(workers, len(cases))) as pool:
        results = pool.map(inspect_case, cases, [num_channels] * len(cases), [num_classes] * len(cases))
        yield from tqdm(results, **progress)


def validate_dataset(
    spec: DatasetSpec, show_progress: bool = True, cache_path: str | Path | None = None, workers: int | None = None
) -> DatasetFingerprint:
    """Return the dataset's fingerprint, or raise MedsegError listing every problem in the dataset.

    Args:
        spec: the dataset.
        show_progress: show a progress bar while reading.
        cache_path: JSON file of clean cases' fingerprints; cases whose files are unchanged are not read again
            (``fingerprint_cache_path``).
        workers: reading processes (default: one per core).
    """
    num_channels, num_classes = len(spec.channel_names), len(spec.class_names)
    cache = FingerprintCache(cache_path) if cache_path else None
    keys = [case_key(case, num_channels, num_classes) for case in spec.cases]
    known = {key: cache.get(key) for key in keys} if cache else {}
    unread = [case for case, key in zip(spec.cases, keys) if known.get(key) is None]
    problems: list[str] = []
    # read to the end before reporting, so the progress bar is cleared before an error line
    fresh = iter(list(_inspect_all(unread, num_channels, num_classes, workers or os.cpu_count() or 1, show_progress)))
    fingerprints: dict[str | None, CaseFingerprint] = {}
    for case, key in zip(spec.cases, keys):
        if known.get(key) is not None:
            fingerprints[key] = known[key]
            continue
        found, fingerprint = next(fresh)
        problems += found
        if fingerprint is not None:
            fingerprints[key] = fingerprint
    if cache:
        cache.save({key: value for key, value in fingerprints.items() if key})
    if len(problems) == 1:
        raise MedsegError(problems[0])
    if problems:
        listing = "\n  ".join(problems)
        raise MedsegError(f"{len(problems)} problems in dataset {spec.root}:\n  {listing}")
    return DatasetFingerprint(str(spec.root), spec.channel_names, spec.class_names, tuple(fingerprints[key] for key in keys))
