"""A DICOM series as the NIfTI image medseg preprocesses: highdicom sorts and stacks the slices and applies the modality
transform (RescaleSlope/Intercept: Hounsfield units for CT); the affine goes from DICOM's LPS to NIfTI's RAS.

Series that are not one regular 3D volume are refused with one line naming the series, before any pixel is decoded.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
from pydicom import Dataset

from medseg.data.dicom_series import read_headers, series_label
from medseg.errors import MedsegError

# Objects that share a study with images but hold no image to segment (PS3.3 C.7.3.1.1.1 modalities).
NON_IMAGE_MODALITIES = {"SEG", "RTSTRUCT", "SR", "RTPLAN", "RTRECORD", "PR", "KO", "DOC", "REG", "RWV", "PLAN", "FID"}
# Direction cosines of one series agree to this much (scanners write them with 5-6 decimals).
ORIENTATION_TOLERANCE = 1e-4
GEOMETRY_TAGS = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing")
# Where the volume's voxels go: columns, rows, slices, the order dicom2nifti and dcm2niix write.
COLUMNS_ROWS_SLICES = [2, 1, 0]


def _kind(ds: Dataset) -> str:
    return f"{ds.get('Modality', '?')} ({getattr(ds.get('SOPClassUID'), 'name', 'unknown SOP class')})"


def _slice_gaps(headers: Sequence[Dataset]) -> np.ndarray:
    """Return the distances in mm between neighbouring slices along the slice normal, sorted by position."""
    orientation = np.asarray(headers[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(orientation[:3], orientation[3:])
    return np.diff(np.sort([np.dot(normal, np.asarray(ds.ImagePositionPatient, dtype=float)) for ds in headers]))


def check_series(headers: Sequence[Dataset], label: str) -> None:
    """Raise a one-line error unless the slices form one regular 3D image volume that medseg can read."""
    first = headers[0]
    if first.get("Modality") in NON_IMAGE_MODALITIES or "Rows" not in first:
        raise MedsegError(f"{label} is a {_kind(first)} object, not an image series; medseg segments image series")
    if any(int(ds.get("NumberOfFrames") or 1) > 1 for ds in headers):
        raise MedsegError(f"{label} is a multi-frame {_kind(first)} file; medseg reads series of single-frame slices: convert it to NIfTI")
    if any(int(ds.get("SamplesPerPixel") or 1) != 1 for ds in headers):
        raise MedsegError(f"{label} is a colour image series; medseg segments greyscale scans")
    missing = sorted({tag for ds in headers for tag in GEOMETRY_TAGS if tag not in ds})
    if missing:
        raise MedsegError(f"{label} has slices without {', '.join(missing)}, so their place in the patient is unknown")
    if len(headers) < 2:
        raise MedsegError(f"{label} is a single slice, not a 3D volume")
    orientations = np.array([ds.ImageOrientationPatient for ds in headers], dtype=float)
    if not np.allclose(orientations, orientations[0], atol=ORIENTATION_TOLERANCE):
        raise MedsegError(f"{label} mixes slice orientations (ImageOrientationPatient differs between slices); export each orientation as its own series")
    if len({(ds.Rows, ds.Columns, *map(float, ds.PixelSpacing)) for ds in headers}) > 1:
        raise MedsegError(f"{label} mixes slice sizes or pixel spacings")
    spacing, _ = hd.spatial.get_series_volume_positions(headers, orientation_tol=ORIENTATION_TOLERANCE)
    if spacing is None:
        gaps = _slice_gaps(headers)
        raise MedsegError(
            f"{label} has slices missing, repeated or unevenly spaced: {len(headers)} slices {gaps.min():.3g} to "
            f"{gaps.max():.3g} mm apart along the slice normal; medseg needs a regular volume"
        )


def read_series(name: str, files: Sequence[Path]) -> nib.Nifti1Image:
    """Return the series as a float32 NIfTI image: voxels (columns, rows, slices) along the slice normal, RAS affine.

    The values are what the modality transform gives (Hounsfield units for CT), as a NIfTI converter writes them.
    """
    label = series_label(name, files)
    slices = read_headers(files, label, pixels=True)  # pixel data stays encoded until highdicom stacks the slices
    check_series(slices, label)
    try:
        volume = hd.get_volume_from_series(
            slices, dtype=np.float32, apply_real_world_transform=False, apply_presentation_lut=False,
            apply_palette_color_lut=False, apply_icc_profile=False, orientation_tol=ORIENTATION_TOLERANCE,
        )
    except (ValueError, RuntimeError, NotImplementedError) as err:  # pixel decoding, an unsupported transfer syntax
        raise MedsegError(f"{label}: cannot read its pixel data: {err}") from None
    volume = volume.permute_spatial_axes(COLUMNS_ROWS_SLICES).ensure_handedness("RIGHT_HANDED", flip_axis=2)
    affine = volume.get_affine("RAS")
    image = nib.Nifti1Image(volume.array, affine)
    image.set_qform(affine, code=1)  # scanner coordinates, as a converted NIfTI records them
    image.set_sform(affine, code=1)
    image.header.set_xyzt_units("mm")
    return image
