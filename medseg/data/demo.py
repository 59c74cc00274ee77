"""Deterministic CT-like phantom datasets in the Medical Segmentation Decathlon layout.

The demo (``DEMO``): each case is a body (soft tissue in air) holding a spine-like bone, an irregular organ
(label 1) and an irregular lesion (label 2) that touches or sits partly inside the organ. Scans have anisotropic
spacing, an oblique LPS-style affine, Hounsfield units with noise and a smooth bias field, and varying sizes, so
that the whole pipeline (reorientation, resampling, CT windowing, cropping) is exercised.

Fine structures (``fine_structures()``): the same kind of body with a large organ (label 1), branching vessels
about 2 voxels wide (label 2) and lesions about 5 voxels across (label 3), at 0.8 x 0.8 x 2.5 mm: data on which a
network that loses detail scores lower (issue 35's comparison with nnU-Net).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["CLASS_NAMES", "DEMO", "FINE_CLASS_NAMES", "FINE_SPACING", "Phantoms", "cache_folder", "ensure_demo_dataset",
           "fine_structures", "generate_demo_dataset", "make_case", "make_fine_case"]

CLASS_NAMES = ("background", "organ", "lesion")
DEMO_VERSION = 1
FINE_CLASS_NAMES = ("background", "organ", "vessel", "lesion")
FINE_SPACING = (0.8, 0.8, 2.5)

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


def _tube(shape: tuple[int, int, int], points: np.ndarray, radius: float) -> np.ndarray:
    """Return the mask of the voxels closer than ``radius`` voxels to any of ``points`` (voxel coordinates, dense
    along a curve, so that the union of balls is a tube)."""
    reach = int(np.ceil(radius))
    offsets = np.stack(np.meshgrid(*[np.arange(-reach, reach + 2)] * 3, indexing="ij"), axis=-1).reshape(-1, 3)
    voxels = np.floor(points)[:, None, :].astype(int) + offsets[None]
    near = np.linalg.norm(voxels - points[:, None, :], axis=-1) < radius
    inside = near & np.all((voxels >= 0) & (voxels < shape), axis=-1)
    mask = np.zeros(shape, bool)
    mask[tuple(voxels[inside].T)] = True
    return mask


def _curve(rng: np.random.Generator, start: np.ndarray, direction: np.ndarray, length: float) -> np.ndarray:
    """Return points every 0.25 voxel along a smooth random curve (voxel coordinates) from ``start``: the direction
    turns a little at each step, more in-plane than through the thick slices."""
    points, step = [start], 0.25
    direction = direction / np.linalg.norm(direction)
    for _ in range(int(length / step)):
        direction = direction + rng.normal(0.0, 0.03, 3) * [1.0, 1.0, 0.4]
        direction /= np.linalg.norm(direction)
        points.append(points[-1] + step * direction)
    return np.array(points)


def make_fine_case(seed: int, index: int, shape: tuple[int, int, int] = (160, 160, 48)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (HU image as int16, label as uint8, affine) of fine-structures case ``index``; same inputs, same case.

    Labels: 1 a large organ; 2 vessels, three smooth curves with a branch each, about 2 voxels wide (radius 1
    voxel in voxel units); 3 lesions about 5 voxels across in-plane (2 mm radius, 3 slices at most), half in the
    organ (darker than it), half in soft tissue (brighter than it). Vessels are contrast-enhanced, brighter than
    the organ. As in the demo: noise of 18 HU and a smooth bias field, plus a slight blur (partial volume).
    """
    from scipy.ndimage import gaussian_filter  # here: the demo, made at a training start, needs no scipy

    rng = np.random.default_rng([seed, index, 35])
    spacing = np.array(FINE_SPACING)
    extent = np.array(shape) * spacing
    voxel = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij"), axis=-1)
    mm = voxel * spacing.astype(np.float32)
    centre = extent / 2

    body = _blob(mm, centre, extent * [0.46, 0.4, 0.95], 0.04 * _smooth_field(rng, shape, 3))
    spine = _blob(mm, centre + [0, -extent[1] * 0.25, 0], np.array([0.08, 0.08, 1.0]) * extent, np.zeros(shape))
    organ_centre = centre + rng.uniform(-0.05, 0.05, 3) * extent + [extent[0] * 0.08, extent[1] * 0.05, 0]
    organ_radii = extent * [rng.uniform(0.22, 0.28), rng.uniform(0.2, 0.25), rng.uniform(0.3, 0.4)]
    organ = _blob(mm, organ_centre, organ_radii, 0.2 * _smooth_field(rng, shape, 5)) & body & ~spine

    vessels = np.zeros(shape, bool)
    for _ in range(3):
        start = np.array(shape) * [rng.uniform(0.3, 0.7), rng.uniform(0.35, 0.7), rng.uniform(0.1, 0.9)]
        trunk = _curve(rng, start, rng.normal(0.0, 1.0, 3) * [1.0, 1.0, 0.3], rng.uniform(0.5, 0.8) * shape[0])
        fork = trunk[rng.integers(len(trunk) // 4, 3 * len(trunk) // 4)]
        branch = _curve(rng, fork, rng.normal(0.0, 1.0, 3) * [1.0, 1.0, 0.3], rng.uniform(0.15, 0.3) * shape[0])
        vessels |= _tube(shape, np.concatenate([trunk, branch]), 1.0)
    vessels &= body & ~spine

    lesions_in, lesions_out = np.zeros(shape, bool), np.zeros(shape, bool)
    centres: list[np.ndarray] = []  # at least 10 voxels apart, so that each lesion stays one component
    for inside, mask in ((True, lesions_in), (False, lesions_out)):
        candidates = np.argwhere((organ if inside else body & ~organ & ~spine) & ~vessels)
        for candidate in candidates[rng.permutation(len(candidates))]:
            if len(centres) == (3 if inside else 6):
                break
            if all(np.linalg.norm(candidate - c) >= 10 for c in centres):
                centres.append(candidate)
                radii = np.array([rng.uniform(1.8, 2.2), rng.uniform(1.8, 2.2), rng.uniform(2.5, 3.5)])
                mask |= _blob(mm, candidate * spacing, radii, np.zeros(shape))
    lesions = (lesions_in | lesions_out) & body & ~spine

    label = np.zeros(shape, np.uint8)
    label[organ] = 1
    label[vessels] = 2
    label[lesions] = 3

    hu = np.full(shape, -1000.0)
    hu[body] = 40.0 + 25.0 * _smooth_field(rng, shape, 6)[body]
    hu[spine] = 700.0
    organ_hu = rng.uniform(110, 140)
    hu[organ] = organ_hu
    hu[vessels] = organ_hu + rng.uniform(60, 90)
    hu[lesions_in & lesions] = organ_hu - rng.uniform(45, 60)
    hu[lesions_out & lesions] = organ_hu + rng.uniform(20, 35)
    hu = gaussian_filter(hu, sigma=0.5)
    hu += 40.0 * _smooth_field(rng, shape, 2)
    hu += rng.normal(0.0, 18.0, shape)
    image = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)
    return image, label, _affine(rng, spacing)


def _write_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    image = nib.Nifti1Image(array, affine)
    image.header.set_qform(affine, code=1)
    image.header.set_sform(affine, code=1)
    image.header.set_xyzt_units("mm")
    nib.save(image, path)


@dataclass(frozen=True)
class Phantoms:
    """A kind of generated dataset: its name (of the dataset and of its cache folder), its version (a change to the
    generator bumps it, so that a cached copy is not reused), its classes and how one case is made."""

    name: str
    version: int
    class_names: tuple[str, ...]
    make_case: Callable[[int, int], tuple[np.ndarray, np.ndarray, np.ndarray]]
    about: str


DEMO = Phantoms("demo", DEMO_VERSION, CLASS_NAMES, make_case, "CT-like phantoms")


def fine_structures(shape: tuple[int, int, int] = (160, 160, 48)) -> Phantoms:
    """Return the fine-structures phantoms (``make_fine_case``) of this shape; tests use a small one."""
    x, y, z = shape
    return Phantoms(f"fine-{x}x{y}x{z}", 1, FINE_CLASS_NAMES, partial(make_fine_case, shape=tuple(shape)),
                    "CT-like phantoms with vessels and small lesions")


def generate_demo_dataset(root: Path, num_cases: int = 24, seed: int = 0, phantoms: Phantoms = DEMO) -> Path:
    """Write `num_cases` phantom cases and an MSD `dataset.json` under `root` and return `root`."""
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(parents=True, exist_ok=True)
    training = []
    for index in range(num_cases):
        name = f"phantom_{index:03d}.nii.gz"
        image, label, affine = phantoms.make_case(seed, index)
        _write_nifti(image, affine, root / "imagesTr" / name)
        _write_nifti(label, affine, root / "labelsTr" / name)
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    description = {
        "name": "MedsegDemo" if phantoms is DEMO else f"Medseg {phantoms.name}",
        "description": f"{phantoms.about} generated by medseg ({phantoms.name} version {phantoms.version}, seed {seed})",
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": {str(i): name for i, name in enumerate(phantoms.class_names)},
        "numTraining": num_cases,
        "numTest": 0,
        "training": training,
        "test": [],
    }
    (root / "dataset.json").write_text(json.dumps(description, indent=2))
    return root


def ensure_demo_dataset(cache_dir: Path | None = None, num_cases: int = 24, seed: int = 0, phantoms: Phantoms = DEMO) -> Path:
    """Return the demo dataset's folder (or that of other ``phantoms``), generating it on first use (atomically, so
    a crash leaves no half dataset), and log where it is: a user who trains on the demo finds the phantoms there."""
    cache_dir = cache_folder(cache_dir)
    root = cache_dir / f"{phantoms.name}-v{phantoms.version}-n{num_cases}-seed{seed}"
    if (root / "dataset.json").is_file():
        log.info(f"built-in {phantoms.name} data: {num_cases} {phantoms.about} in {root}")
        return root
    log.info(f"generating the built-in {phantoms.name} data: {num_cases} {phantoms.about} in {root}")
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{phantoms.name}-", dir=cache_dir))
    try:
        generate_demo_dataset(staging, num_cases, seed, phantoms)
        try:
            staging.rename(root)
        except OSError:  # another process finished first
            if not (root / "dataset.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return root
