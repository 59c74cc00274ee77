"""Deterministic CT-like phantom dataset in the Medical Segmentation Decathlon layout.

Each case is a body (soft tissue in air) holding a spine-like bone, an irregular organ (label 1) and an
irregular lesion (label 2) that touches or sits partly inside the organ. Scans have anisotropic spacing,
an oblique LPS-style affine, Hounsfield units with noise and a smooth bias field, and varying sizes,
so that the whole pipeline (reorientation, resampling, CT windowing, cropping) is exercised.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F

CLASS_NAMES = ("background", "organ", "lesion")
DEMO_VERSION = 1

log = logging.getLogger(__name__)


def cache_folder(cache_dir: str | Path | None = None) -> Path:
    """Return the folder of medseg's caches and demo data: ``cache_dir`` when given, else $MEDSEG_CACHE, else ~/.cache/medseg."""
    if cache_dir:
        return Path(cache_dir)
    return Path(os.environ.get("MEDSEG_CACHE", Path.home() / ".cache" / "medseg"))


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int, int], coarse: int) -> np.ndarray:
    """Return a smooth random field in about [-1, 1]: coarse Gaussian noise upsampled trilinearly."""
    grid = torch.from_numpy(rng.standard_normal((1, 1, coarse, coarse, coarse)).astype(np.float32))
    field = F.interpolate(grid, size=shape, mode="trilinear", align_corners=True)[0, 0].numpy()
    return field / max(float(np.abs(field).max()), 1e-6)


def _blob(mm: np.ndarray, centre: np.ndarray, radii: np.ndarray, roughness: np.ndarray) -> np.ndarray:
    """Return the mask of an ellipsoid (radii in mm) whose surface is pushed in and out by `roughness`."""
    distance = np.sqrt((((mm - centre) / radii) ** 2).sum(axis=-1))
    return distance < 1.0 + roughness


def _affine(rng: np.random.Generator, spacing: np.ndarray) -> np.ndarray:
    """Return an oblique, LPS-style voxel-to-world affine (x and y flipped, a few degrees of rotation)."""
    angle = np.deg2rad(rng.uniform(-8.0, 8.0))
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0], [0.0, 0.0, 1.0]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([-1.0, -1.0, 1.0]) @ np.diag(spacing)
    affine[:3, 3] = rng.uniform(-200.0, 200.0, size=3)
    return affine


def make_case(seed: int, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (HU image as int16, label as uint8, affine) of demo case `index`; same inputs, same case."""
    rng = np.random.default_rng([seed, index])
    shape = (int(rng.integers(88, 113)), int(rng.integers(88, 113)), int(rng.integers(36, 49)))
    spacing = np.array([rng.uniform(1.1, 1.4)] * 2 + [rng.uniform(2.5, 3.5)])
    extent = np.array(shape) * spacing
    mm = np.stack(np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing)], indexing="ij"), axis=-1)
    centre = extent / 2

    body = _blob(mm, centre + [0, 0, 0], extent * [0.45, 0.38, 0.9], 0.04 * _smooth_field(rng, shape, 3))
    spine = _blob(mm, centre + [0, -extent[1] * 0.22, 0], np.array([12.0, 12.0, extent[2]]), np.zeros(shape))

    organ_centre = centre + rng.uniform(-0.08, 0.08, 3) * extent + [extent[0] * 0.1, 0, 0]
    organ_radii = np.array([rng.uniform(28, 38), rng.uniform(24, 32), rng.uniform(30, 45)])
    organ = _blob(mm, organ_centre, organ_radii, 0.22 * _smooth_field(rng, shape, 5)) & body

    direction = rng.standard_normal(3)
    direction /= np.linalg.norm(direction)
    lesion_centre = organ_centre + direction * organ_radii * rng.uniform(0.6, 0.95)
    lesion_radii = rng.uniform(12.0, 18.0, 3)
    lesion = _blob(mm, lesion_centre, lesion_radii, 0.25 * _smooth_field(rng, shape, 4)) & body

    label = np.zeros(shape, np.uint8)
    label[organ] = 1
    label[lesion] = 2

    hu = np.full(shape, -1000.0)
    hu[body] = 40.0 + 25.0 * _smooth_field(rng, shape, 6)[body]  # fat/muscle texture
    hu[spine] = 700.0
    hu[organ] = rng.uniform(110, 140)
    hu[lesion] = rng.uniform(200, 240)
    hu += 40.0 * _smooth_field(rng, shape, 2)  # scanner bias
    hu += rng.normal(0.0, 18.0, shape)
    image = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)
    return image, label, _affine(rng, spacing)


def _write_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    image = nib.Nifti1Image(array, affine)
    image.header.set_qform(affine, code=1)
    image.header.set_sform(affine, code=1)
    image.header.set_xyzt_units("mm")
    nib.save(image, path)


def generate_demo_dataset(root: Path, num_cases: int = 24, seed: int = 0) -> Path:
    """Write `num_cases` phantom cases and an MSD `dataset.json` under `root` and return `root`."""
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(parents=True, exist_ok=True)
    training = []
    for index in range(num_cases):
        name = f"phantom_{index:03d}.nii.gz"
        image, label, affine = make_case(seed, index)
        _write_nifti(image, affine, root / "imagesTr" / name)
        _write_nifti(label, affine, root / "labelsTr" / name)
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    description = {
        "name": "MedsegDemo",
        "description": f"CT-like phantoms generated by medseg (version {DEMO_VERSION}, seed {seed})",
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": {str(i): name for i, name in enumerate(CLASS_NAMES)},
        "numTraining": num_cases,
        "numTest": 0,
        "training": training,
        "test": [],
    }
    (root / "dataset.json").write_text(json.dumps(description, indent=2))
    return root


def ensure_demo_dataset(cache_dir: Path | None = None, num_cases: int = 24, seed: int = 0) -> Path:
    """Return the demo dataset's folder, generating it on first use (atomically, so a crash leaves no half dataset),
    and log where it is: a user who trains on the demo finds the phantoms there."""
    cache_dir = cache_folder(cache_dir)
    root = cache_dir / f"demo-v{DEMO_VERSION}-n{num_cases}-seed{seed}"
    if (root / "dataset.json").is_file():
        log.info(f"built-in demo data: {num_cases} CT-like phantoms in {root}")
        return root
    log.info(f"generating the built-in demo data: {num_cases} CT-like phantoms in {root}")
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".demo-", dir=cache_dir))
    try:
        generate_demo_dataset(staging, num_cases, seed)
        try:
            staging.rename(root)
        except OSError:  # another process finished first
            if not (root / "dataset.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return root
