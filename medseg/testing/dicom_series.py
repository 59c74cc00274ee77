"""Synthetic DICOM series written with pydicom, and the RAS affine a NIfTI of the same voxels has (for comparing the two)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def oblique_directions(degrees: float = 20.0) -> tuple[np.ndarray, np.ndarray]:
    """Return a row and a column direction (LPS, unit vectors) rotated about two axes, so no voxel axis is a patient axis."""
    a, b = np.deg2rad(degrees), np.deg2rad(degrees / 2)
    about_z = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    about_x = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    rotation = about_x @ about_z
    return rotation[:, 0], rotation[:, 1]


@dataclass
class SeriesGeometry:
    """Where a series' voxels lie: first slice's top-left corner, directions (LPS), spacings in mm."""

    origin: tuple[float, float, float] = (-30.0, 12.5, 80.0)
    row_direction: np.ndarray = field(default_factory=lambda: np.array([1.0, 0.0, 0.0]))
    column_direction: np.ndarray = field(default_factory=lambda: np.array([0.0, 1.0, 0.0]))
    pixel_spacing: tuple[float, float] = (1.5, 1.5)  # between rows, between columns (DICOM order)
    slice_spacing: float = 1.5

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.row_direction, self.column_direction)

    def position(self, index: int) -> np.ndarray:
        return np.asarray(self.origin) + index * self.slice_spacing * self.normal

    def ras_affine(self) -> np.ndarray:
        """Return the RAS affine of the (column, row, slice) voxel array, as dicom2nifti or dcm2niix would write it."""
        lps = np.eye(4)
        lps[:3, 0] = self.row_direction * self.pixel_spacing[1]
        lps[:3, 1] = self.column_direction * self.pixel_spacing[0]
        lps[:3, 2] = self.normal * self.slice_spacing
        lps[:3, 3] = self.origin
        return LPS_TO_RAS @ lps


def write_series(
    folder: Path,
    hu: np.ndarray,
    geometry: SeriesGeometry | None = None,
    slope: float = 1.0,
    intercept: float = -1024.0,
    description: str = "CT abdomen",
    shuffle: bool = True,
    omit: tuple[str, ...] = (),
    **attributes,
) -> list[Path]:
    """Write ``hu`` (columns, rows, slices) as a CT series of one file per slice in ``folder``; return the files by slice.

    Stored values are (hu - intercept) / slope, as a scanner stores them. Files are named in a shuffled order so that
    readers must sort by position; ``attributes`` overrides or adds DICOM attributes on every slice, and the keywords
    in ``omit`` are left out (as SimpleITK's usual recipe leaves out SliceThickness and FrameOfReferenceUID).
    """
    geometry = geometry or SeriesGeometry()
    folder.mkdir(parents=True, exist_ok=True)
    stored = np.round((hu - intercept) / slope).astype(np.int16)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    order = np.random.default_rng(0).permutation(hu.shape[2]) if shuffle else np.arange(hu.shape[2])
    files = []
    for index in range(hu.shape[2]):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Phantom^Test", "PHANTOM01", "", "O"
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "20260101", "120000", "1", "", ""
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber, ds.SeriesDescription = "CT", 3, int(order[index]) + 1, description
        ds.Manufacturer = "medseg tests"
        ds.ImagePositionPatient = [float(v) for v in geometry.position(index)]
        ds.ImageOrientationPatient = [float(v) for v in (*geometry.row_direction, *geometry.column_direction)]
        ds.PixelSpacing = list(geometry.pixel_spacing)
        ds.SliceThickness = geometry.slice_spacing
        ds.Rows, ds.Columns = hu.shape[1], hu.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = slope, intercept, "HU"
        ds.PixelData = np.ascontiguousarray(stored[:, :, index].T).tobytes()  # rows, columns
        for keyword, value in attributes.items():
            setattr(ds, keyword, value)
        for keyword in omit:
            delattr(ds, keyword)
        path = folder / f"IM{int(order[index]):04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return files
