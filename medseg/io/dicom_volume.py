"""A DICOM series as the NIfTI image medseg preprocesses: highdicom sorts and stacks the slices and applies the modality
transform (RescaleSlope/Intercept: Hounsfield units for CT); the affine goes from DICOM's LPS to NIfTI's RAS.

Series that are not one regular 3D volume are refused with one line naming the series, before any pixel is decoded.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
from pydicom import Dataset
from pydicom.uid import generate_uid

from medseg.errors import MedsegError
from medseg.io.dicom_series import read_headers, series_label
from medseg.io.nifti import check_finite, check_geometry

log = logging.getLogger(__name__)

# Objects that share a study with images but hold no image to segment (PS3.3 C.7.3.1.1.1 modalities).
NON_IMAGE_MODALITIES = {"SEG", "RTSTRUCT", "SR", "RTPLAN", "RTRECORD", "PR", "KO", "DOC", "REG", "RWV", "PLAN", "FID"}
# Direction cosines of one series agree to this much (scanners write them with 5-6 decimals).
ORIENTATION_TOLERANCE = 1e-4
GEOMETRY_TAGS = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing")
# Where the volume's voxels go: columns, rows, slices, the order dicom2nifti and dcm2niix write.
COLUMNS_ROWS_SLICES = [2, 1, 0]
# Attributes highdicom needs that writers often leave out (SimpleITK's usual recipe writes neither), and what stands in
# for each: the positions and orientation of the slices give the volume without them, as dicom2nifti reads such series.
DERIVED_TAGS = {
    "SliceThickness": "the slice spacing as its SliceThickness",
    "FrameOfReferenceUID": "a FrameOfReferenceUID derived from its SeriesInstanceUID",
}


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


def complete_series(headers: Sequence[Dataset]) -> list[str]:
    """Fill in, on the headers in memory only, the ``DERIVED_TAGS`` a regular series' slices leave out; return those
    that were missing.

    SliceThickness becomes the spacing of the slices along their normal, which is what a DICOM-SEG records of it. A
    missing FrameOfReferenceUID becomes one derived from the SeriesInstanceUID: the slices' positions are still in one
    patient coordinate system, just an unnamed one, and a DICOM-SEG must name it (PS3.3 C.7.4.1). Derived, not random,
    so that every run's DICOM-SEG of a series states the same frame; viewers place each frame by the source slice it
    references, which stays exact.
    """
    missing = [tag for tag in DERIVED_TAGS if any(tag not in ds for ds in headers)]
    if not missing:
        return missing
    gap = float(np.median(_slice_gaps(headers)))
    seed = ["medseg frame of reference", str(headers[0].get("SeriesInstanceUID", ""))]
    frame = next((ds.FrameOfReferenceUID for ds in headers if "FrameOfReferenceUID" in ds), None) or generate_uid(entropy_srcs=seed)
    for ds in headers:
        if "SliceThickness" not in ds:
            ds.SliceThickness = round(gap, 6)
        if "FrameOfReferenceUID" not in ds:
            ds.FrameOfReferenceUID = frame
    return missing


def read_series(name: str, files: Sequence[Path]) -> nib.Nifti1Image:
    """Return the series as a float32 NIfTI image: voxels (columns, rows, slices) along the slice normal, RAS affine.

    The values are what the modality transform gives (Hounsfield units for CT), as a NIfTI converter writes them.
    """
    label = series_label(name, files)
    slices = read_headers(files, label, pixels=True)  # pixel data stays encoded until highdicom stacks the slices
    check_series(slices, label)
    missing = complete_series(slices)
    if missing:
        log.warning(
            "%s has slices without %s: read from ImagePositionPatient and ImageOrientationPatient, as dicom2nifti reads "
            "it; a DICOM-SEG of it records %s", label, " and ".join(missing), " and ".join(DERIVED_TAGS[tag] for tag in missing),
        )
    try:
        volume = hd.get_volume_from_series(
            slices, dtype=np.float32, apply_real_world_transform=False, apply_presentation_lut=False,
            apply_palette_color_lut=False, apply_icc_profile=False, orientation_tol=ORIENTATION_TOLERANCE,
        )
    except (ValueError, RuntimeError, NotImplementedError) as err:  # pixel decoding, an unsupported transfer syntax
        raise MedsegError(f"{label}: cannot read its pixel data: {err}") from None
    volume = volume.permute_spatial_axes(COLUMNS_ROWS_SLICES).ensure_handedness("RIGHT_HANDED", flip_axis=2)
    affine = volume.get_affine("RAS")
    check_geometry(affine, label)
    check_finite(volume.array, label)
    image = nib.Nifti1Image(volume.array, affine)
    image.set_qform(affine, code=1)  # scanner coordinates, as a converted NIfTI records them
    image.set_sform(affine, code=1)
    image.header.set_xyzt_units("mm")
    return image
