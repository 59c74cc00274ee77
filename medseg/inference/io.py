"""NIfTI reading with one-line errors, and geometry-exact, atomic label-map writing."""

from __future__ import annotations

import tempfile
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import nibabel as nib
import numpy as np

from medseg.atomic import atomic_target
from medseg.data.formats import NIFTI_SUFFIXES, case_name
from medseg.errors import MedsegError

NiftiImage = nib.Nifti1Image | nib.Nifti2Image
# What nibabel and gzip raise on a damaged file; caught only around reading.
READ_ERRORS = (OSError, EOFError, zlib.error, nib.filebasedimages.ImageFileError)


@dataclass(frozen=True)
class Scan:
    """One scan to segment: its channel files (what training's ``LoadImaged`` reads) and the header outputs copy."""

    paths: tuple[Path, ...]
    reference: NiftiImage
    name: str

    @property
    def spatial_shape(self) -> tuple[int, int, int]:
        return tuple(int(v) for v in self.reference.shape[:3])


def is_nifti(path: Path) -> bool:
    """Return whether `path` is a NIfTI file by name (hidden temporary files excluded)."""
    return path.is_file() and not path.name.startswith(".") and path.name.endswith(NIFTI_SUFFIXES)


def load_header(path: str | Path) -> NiftiImage:
    """Return the NIfTI image with only its header read (voxels stay on disk until needed)."""
    path = Path(path)
    if not path.is_file():
        raise MedsegError(f"{path} does not exist")
    try:
        image = nib.load(path)
    except READ_ERRORS as err:
        raise MedsegError(f"cannot read {path} (corrupt or not NIfTI?): {err}") from None
    if not isinstance(image, (nib.Nifti1Image, nib.Nifti2Image)):
        raise MedsegError(f"{path} is not a NIfTI image")
    return image


def read_voxels(path: str | Path) -> tuple[NiftiImage, np.ndarray]:
    """Return the image and its voxel array (scaling applied), naming the file if it is truncated or corrupt."""
    image = load_header(path)
    try:
        return image, np.asanyarray(image.dataobj)
    except READ_ERRORS as err:
        raise MedsegError(f"cannot read {path} (corrupt or truncated?): {err}") from None


def check_volume(image: NiftiImage, name: str | Path) -> None:
    """Raise a one-line error unless `image` is 3D, or 4D with channels last."""
    shape = image.shape
    if len(shape) < 3 or min(shape[:3]) < 2:
        raise MedsegError(f"{name} is not a 3D volume (shape {list(shape)}); medseg segments 3D scans")
    if len(shape) > 4:
        raise MedsegError(f"{name} has shape {list(shape)}; expected 3D, or 4D with channels last")


def open_scan(paths: str | Path | Sequence[str | Path], channels: int, name: str | None = None) -> Scan:
    """Return the scan in one file (3D, or 4D with channels last) or one file per channel, checked against the model.

    Only headers are read here, so a folder of scans is checked cheaply before any voxel is loaded.
    """
    files = tuple(Path(p) for p in ([paths] if isinstance(paths, (str, Path)) else paths))
    images = [load_header(path) for path in files]
    for image, path in zip(images, files):
        check_volume(image, path)
    found = sum(image.shape[3] if image.ndim == 4 else 1 for image in images)
    listed = ", ".join(str(path) for path in files)
    if found != channels:
        raise MedsegError(f"{listed} has {found} channel(s) but the model expects {channels}")
    first = images[0]
    if any(image.shape[:3] != first.shape[:3] or not np.allclose(image.affine, first.affine, atol=1e-4) for image in images):
        raise MedsegError(f"channel files {listed} differ in shape or affine")
    return Scan(files, first, name or case_name(files[0]))


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


def write_atomic(image: NiftiImage, path: Path) -> None:
    """Write `image` to `path` atomically (temporary file in the same folder, then rename)."""
    with atomic_target(path) as temp:
        nib.save(image, temp)
