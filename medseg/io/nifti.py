"""NIfTI reading and writing for every stage: one-line errors naming the file, one check of a volume (header, geometry,
voxels) shared by training, planning, inference and evaluation, one affine tolerance, label maps on the reference
scan's exact geometry."""

from __future__ import annotations

import math
import tempfile
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import nibabel as nib
import numpy as np

from medseg.errors import MedsegError

NiftiImage = nib.Nifti1Image | nib.Nifti2Image
NIFTI_SUFFIXES = (".nii.gz", ".nii")
# Files that must share a voxel grid (channels, image and label, prediction and truth) agree to this many mm.
AFFINE_TOLERANCE_MM = 1e-3
# What nibabel and gzip raise on a damaged file; caught only around reading.
READ_ERRORS = (OSError, EOFError, ValueError, zlib.error, nib.filebasedimages.ImageFileError)
# Voxel sizes (mm) a scan may have. Clinical CT, MRI and PET voxels lie between about 0.1 mm (dental cone-beam CT,
# 7 T MRI) and 10-20 mm (thick slices, localisers); beyond this range the header is wrong, or in other units than mm.
SPACING_RANGE_MM = (0.01, 100.0)
# deflate's largest expansion: at most 258 bytes per 2-bit code, about 1032:1 (zlib's technical notes). The gzip
# trailer is no safer bound: it holds the size modulo 4 GiB, and of the last member only.
MAX_GZIP_RATIO = 1032


def case_name(path: str | Path) -> str:
    """Return the file name without its NIfTI extension (``.nii`` or ``.nii.gz``)."""
    name = Path(path).name
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def is_nifti(path: Path) -> bool:
    """Return whether `path` is a NIfTI file by name (hidden temporary files excluded)."""
    return path.is_file() and not path.name.startswith(".") and path.name.endswith(NIFTI_SUFFIXES)


def unreadable(path: str | Path, error: BaseException) -> MedsegError:
    """Return the one-line error for a file that exists but is not a readable NIfTI."""
    return MedsegError(f"{path}: cannot read as NIfTI (corrupt or truncated?): {type(error).__name__}: {error}")


def load_header(path: str | Path) -> NiftiImage:
    """Return the NIfTI image with only its header read (voxels stay on disk until needed), after ``check_header``."""
    path = Path(path)
    if not path.is_file():
        raise MedsegError(f"{path}: file not found")
    try:
        image = nib.load(path)
    except READ_ERRORS as err:
        raise unreadable(path, err) from None
    if not isinstance(image, (nib.Nifti1Image, nib.Nifti2Image)):
        raise MedsegError(f"{path}: not a NIfTI image")
    check_header(image, path)
    return image


def read_voxels(path: str | Path) -> tuple[NiftiImage, np.ndarray]:
    """Return the image and its voxel array (scaling applied), naming the file if it is truncated or corrupt, or if a
    voxel is NaN or infinite."""
    image = load_header(path)
    try:
        voxels = np.asanyarray(image.dataobj)
    except READ_ERRORS as err:
        raise unreadable(path, err) from None
    check_finite(voxels, path)
    return image, voxels


def voxel_spacing(affine: np.ndarray) -> np.ndarray:
    """Return the voxel size in mm along each voxel axis (the affine's column lengths, as MONAI's Spacingd reads it)."""
    return np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))


def check_header(image: NiftiImage, path: str | Path) -> None:
    """Raise a one-line error naming ``path`` unless its header's voxels fit in the file and its geometry is a scan's.

    Run on every header read, before any voxel is: a damaged header would otherwise be believed (a MemoryError for
    claimed voxels, a silent wrong segmentation for impossible geometry).
    """
    path = Path(path)
    shape, dtype = image.header.get_data_shape(), image.header.get_data_dtype()
    needed = getattr(image.dataobj, "offset", 0) + math.prod(int(size) for size in shape) * dtype.itemsize
    size = path.stat().st_size
    room = size * MAX_GZIP_RATIO if path.name.endswith(".gz") else size
    if needed > room:
        raise MedsegError(
            f"{path}: header claims {'x'.join(map(str, shape))} voxels of {dtype} ({needed:,} bytes), more than its "
            f"{size:,}-byte file can hold; the file is truncated or its header is damaged"
        )
    check_geometry(image.affine, path)


def check_geometry(affine: np.ndarray, name: str | Path) -> None:
    """Raise a one-line error naming ``name`` unless ``affine`` is finite and invertible with voxels in ``SPACING_RANGE_MM``.

    A mirrored affine (negative determinant) is fine; axes that are parallel are not. Their volume against a box
    of the same voxel sizes is at least 1e-3 for anything a scanner writes: gantry tilt shears by 30 degrees at most.
    """
    affine = np.asarray(affine, dtype=np.float64)
    if not np.isfinite(affine).all():
        raise MedsegError(f"{name}: the header's affine holds NaN or infinite values; fix its sform/qform")
    spacing = voxel_spacing(affine)
    low, high = SPACING_RANGE_MM
    if not (low <= spacing.min() and spacing.max() <= high):
        raise MedsegError(
            f"{name}: voxel spacing {[float(f'{s:.4g}') for s in spacing]} mm is outside {low:g}..{high:g} mm; fix the "
            "header's pixdim or affine (are its units mm?)"
        )
    if abs(np.linalg.det(affine[:3, :3])) < 1e-3 * spacing.prod():
        raise MedsegError(f"{name}: the header's affine is singular (its voxel axes are parallel); fix its sform/qform")


def check_finite(voxels: np.ndarray, name: str | Path) -> None:
    """Raise a one-line error naming ``name`` if a voxel is NaN or infinite: normalisation would clip or spread it into
    a segmentation that looks plausible."""
    if voxels.dtype.kind not in "fc" or np.isfinite(voxels).all():
        return
    bad = int(voxels.size - np.count_nonzero(np.isfinite(voxels)))
    raise MedsegError(f"{name}: {bad:,} voxel(s) are NaN or infinite; fix or mask them in the file")


def same_grid(a: NiftiImage, b: NiftiImage) -> bool:
    """Return whether two images share shape and affine (within ``AFFINE_TOLERANCE_MM``)."""
    return a.shape[:3] == b.shape[:3] and np.allclose(a.affine, b.affine, atol=AFFINE_TOLERANCE_MM)


def in_ras_order(per_axis: Sequence, affine: np.ndarray) -> tuple:
    """Return values given per voxel axis (spacing, shape) in the axis order MONAI's ``Orientationd(axcodes="RAS")`` gives."""
    ordered: list = [None] * 3
    for value, ras_axis in zip(per_axis, nib.orientations.io_orientation(affine)[:, 0]):
        ordered[int(ras_axis)] = value
    return tuple(ordered)


def check_volume(image: NiftiImage, name: str | Path) -> None:
    """Raise a one-line error unless `image` is 3D, or 4D with channels last."""
    shape = image.shape
    if len(shape) < 3 or min(shape[:3]) < 2:
        raise MedsegError(f"{name} is not a 3D volume (shape {list(shape)}); medseg segments 3D scans")
    if len(shape) > 4:
        raise MedsegError(f"{name} has shape {list(shape)}; expected 3D, or 4D with channels last")


def open_scan(paths: Sequence[Path], channels: int) -> NiftiImage:
    """Return the header outputs copy (the first file's) after checking the scan's files against the model.

    A scan is one file (3D, or 4D with channels last) or one file per channel. Only headers are read, so
    a folder of scans is checked cheaply before any voxel is loaded.
    """
    images = [load_header(path) for path in paths]
    for image, path in zip(images, paths):
        check_volume(image, path)
    found = sum(image.shape[3] if image.ndim == 4 else 1 for image in images)
    listed = ", ".join(str(path) for path in paths)
    if found != channels:
        raise MedsegError(f"{listed} has {found} channel(s) but the model expects {channels}")
    if not all(same_grid(image, images[0]) for image in images):
        raise MedsegError(f"channel files {listed} differ in shape or affine")
    return images[0]


@contextmanager
def saved_image(image: NiftiImage) -> Iterator[Path]:
    """Yield a temporary .nii file holding `image`, so in-memory images take the same path as files."""
    if not isinstance(image, (nib.Nifti1Image, nib.Nifti2Image)):
        raise MedsegError(f"expected a NIfTI image or a path, got {type(image).__name__}")
    with tempfile.TemporaryDirectory(prefix="medseg-") as folder:
        path = Path(folder) / "image.nii"
        nib.save(image, path)
        yield path


def label_dtype(num_classes: int) -> type[np.integer]:
    """Return uint8 for up to 256 classes, else uint16."""
    return np.uint8 if num_classes <= 256 else np.uint16


def like_reference(data: np.ndarray, reference: NiftiImage) -> NiftiImage:
    """Return `data` as a NIfTI with the reference's affine, qform/sform and their codes, units and header.

    Scaling (scl_slope/inter) and display range are reset because the new voxels are stored as they are.
    """
    header = reference.header.copy()
    header.set_data_dtype(data.dtype)
    header.set_slope_inter(np.nan, np.nan)
    header["cal_min"], header["cal_max"] = 0, 0
    return type(reference)(data, None, header=header)
