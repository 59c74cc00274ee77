"""Generated datasets in MSD layout, for tests and benchmarks: an anisotropic 4-channel MRI-like one, a large,
mostly constant CT-like one, and CT phantoms of a fixed size to time training and inference on."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F

from medseg.data.demo import CLASS_NAMES, make_case

CT_PHANTOMS, PHANTOM_SHAPE, PHANTOM_SPACING = 12, (192, 192, 112), (0.8, 0.8, 2.5)


def write_msd(root: Path, cases: list[tuple[np.ndarray, np.ndarray, np.ndarray]], modality: dict, labels: dict) -> Path:
    """Write (image, label, affine) cases and an MSD dataset.json under ``root``; return ``root``."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    training = []
    for index, (image, label, affine) in enumerate(cases):
        name = f"case_{index:03d}.nii.gz"
        nib.save(nib.Nifti1Image(image, affine), root / "imagesTr" / name)
        nib.save(nib.Nifti1Image(label, affine), root / "labelsTr" / name)
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    (root / "dataset.json").write_text(json.dumps({"modality": modality, "labels": labels, "training": training}))
    return root


def write_mri_like(root: Path) -> Path:
    """Write five MRI-like cases under ``root``: 4 channels (4D files), 0.9 mm in-plane, 5 mm slices, a tumour and its core."""
    rng = np.random.default_rng(0)
    cases = []
    for index in range(5):
        shape = (int(rng.integers(150, 170)), int(rng.integers(150, 170)), int(rng.integers(26, 32)))
        label = np.zeros(shape, np.uint8)
        label[50:100, 60:110, 8:20] = 1
        label[65:85, 75:95, 11:17] = 2
        image = rng.normal(300.0, 40.0, (*shape, 4)).astype(np.float32) + label[..., None] * np.array([80.0, -50.0, 120.0, 30.0], np.float32)
        cases.append((image, label, np.diag([0.9, 0.9, 5.0 + 0.2 * index, 1.0])))
    labels = {"0": "background", "1": "tumour", "2": "core"}
    return write_msd(root, cases, {"0": "FLAIR", "1": "T1w", "2": "T1gd", "3": "T2w"}, labels)


def write_ct_like(root: Path) -> Path:
    """Write two CT-like cases of 420x400x210 voxels (0.8 x 0.8 x 1.5 mm) under ``root``, air and a box of tissue: a few MiB gzipped."""
    cases = []
    for index in range(2):
        image = np.full((420, 400, 210), -1000, np.int16)
        image[60:360, 80:330, 20:190] = 40 + 10 * index
        label = np.zeros(image.shape, np.uint8)
        label[150:250, 150:250, 60:140] = 1
        image[label == 1] = 120
        cases.append((image, label, np.diag([0.8, 0.8, 1.5, 1.0])))
    return write_msd(root, cases, {"0": "CT"}, {"0": "background", "1": "liver"})


def write_ct_phantoms(root: Path) -> Path:
    """Write CT_PHANTOMS CT-like scans (the demo phantoms stretched to 192x192x112 voxels at 0.8x0.8x2.5 mm) in MSD
    layout under ``root``, unless it holds them already; return ``root``."""
    if (root / "dataset.json").is_file():
        return root
    for folder in ("imagesTr", "labelsTr"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    affine = np.diag([-PHANTOM_SPACING[0], -PHANTOM_SPACING[1], PHANTOM_SPACING[2], 1.0])
    training = []
    for index in range(CT_PHANTOMS):
        image, label, _ = make_case(seed=1, index=index)
        grow = lambda a, mode: F.interpolate(torch.from_numpy(a.astype(np.float32))[None, None], size=PHANTOM_SHAPE, mode=mode)[0, 0].numpy()  # noqa: E731
        name = f"scan_{index:03d}.nii.gz"
        nib.save(nib.Nifti1Image(np.rint(grow(image, "trilinear")).astype(np.int16), affine), root / "imagesTr" / name)
        nib.save(nib.Nifti1Image(grow(label, "nearest").astype(np.uint8), affine), root / "labelsTr" / name)
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    description = {"name": "TrainingBenchmark", "modality": {"0": "CT"}, "labels": {str(i): n for i, n in enumerate(CLASS_NAMES)},
                   "numTraining": CT_PHANTOMS, "training": training, "test": []}
    (root / "dataset.json").write_text(json.dumps(description, indent=1))
    return root
