"""DICOM series as scans: found in folders beside NIfTI files, named stably, read with their geometry and Hounsfield
units, and refused with one line naming the series when they are not one regular image volume."""

from __future__ import annotations

import sys

import nibabel as nib
import numpy as np
import pytest

from medseg.data.formats import find_scans
from medseg.errors import MedsegError

pytest.importorskip("pydicom")
pytest.importorskip("highdicom")  # medseg's DICOM modules need both (the "dicom" extra)
from medseg.testing.dicom_series import SeriesGeometry, oblique_directions, write_series  # noqa: E402
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402  (after the skip without pydicom)
from pydicom.uid import (  # noqa: E402
    ComprehensiveSRStorage, ExplicitVRLittleEndian, MediaStorageDirectoryStorage, RTStructureSetStorage, SegmentationStorage, generate_uid,
)
from medseg.io.dicom_series import series_name  # noqa: E402
from medseg.io.dicom_volume import read_series  # noqa: E402

SHAPE = (12, 10, 6)


def _hu() -> np.ndarray:
    return np.random.default_rng(0).integers(-1000, 1500, SHAPE).astype(np.float32)


def _read(folder) -> nib.Nifti1Image:
    (case,) = find_scans(folder)
    return read_series(case.name, case.images)


def test_each_series_is_a_case_found_in_subfolders_beside_nifti_files(tmp_path):
    write_series(tmp_path / "study" / "ct", _hu(), description="CT abdomen")
    write_series(tmp_path / "study" / "late", _hu(), description="CT late phase")
    nib.save(nib.Nifti1Image(_hu(), np.eye(4)), tmp_path / "scan.nii.gz")
    cases = find_scans(tmp_path)
    assert [case.name for case in cases if not case.dicom] == ["scan"]
    series = sorted((case for case in cases if case.dicom), key=lambda case: case.name)
    assert [case.name.rsplit("_", 1)[0] for case in series] == ["CT_abdomen", "CT_late_phase"]
    assert [len(case.images) for case in series] == [SHAPE[2], SHAPE[2]]


def test_a_dicomdir_beside_the_series_is_not_a_case(tmp_path):
    write_series(tmp_path / "series", _hu())
    index = Dataset()
    index.file_meta = FileMetaDataset()
    index.file_meta.MediaStorageSOPClassUID = MediaStorageDirectoryStorage
    index.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    index.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    index.FileSetID = "EXPORT"
    index.save_as(tmp_path / "DICOMDIR", enforce_file_format=True)
    assert [len(case.images) for case in find_scans(tmp_path)] == [SHAPE[2]]


def test_series_name_is_the_sanitised_description_and_a_stable_hash_of_the_uid():
    name = series_name("  T1 / post-contrast (3D) ", "1.2.3.4")
    assert name == series_name("  T1 / post-contrast (3D) ", "1.2.3.4")
    assert name.startswith("T1_post-contrast_3D_") and len(name.rsplit("_", 1)[1]) == 8
    assert series_name("T1 / post-contrast (3D)", "1.2.3.5") != name
    assert series_name("", "1.2.3.4").startswith("series_")


def test_oblique_series_has_the_affine_a_nifti_converter_gives_and_voxels_in_column_row_slice_order(tmp_path):
    row, column = oblique_directions()
    geometry = SeriesGeometry(row_direction=row, column_direction=column, pixel_spacing=(0.8, 1.2), slice_spacing=2.5)
    hu = _hu()
    write_series(tmp_path, hu, geometry)
    image = _read(tmp_path)
    np.testing.assert_allclose(image.affine, geometry.ras_affine(), atol=1e-4)
    np.testing.assert_array_equal(image.get_fdata(), hu)
    assert image.get_qform(coded=True)[1] == image.get_sform(coded=True)[1] == 1
    np.testing.assert_allclose(image.header.get_zooms(), (1.2, 0.8, 2.5), rtol=1e-5)


def test_slices_stored_against_the_normal_are_put_along_it(tmp_path):
    geometry = SeriesGeometry(slice_spacing=-2.0)  # positions decrease along the normal, as many scanners store them
    hu = _hu()
    write_series(tmp_path, hu, geometry)
    image = _read(tmp_path)
    np.testing.assert_array_equal(image.get_fdata(), hu[:, :, ::-1])
    np.testing.assert_allclose(image.affine[:3, 2], np.diag([-1, -1, 1]) @ geometry.normal * 2.0, atol=1e-6)


def test_rescale_slope_and_intercept_give_hounsfield_units(tmp_path):
    hu = np.round(_hu() / 2) * 2  # what a slope of 2 can store
    write_series(tmp_path, hu, slope=2.0, intercept=-3000.0)
    np.testing.assert_array_equal(_read(tmp_path).get_fdata(), hu)


@pytest.mark.parametrize("omit", [("SliceThickness",), ("FrameOfReferenceUID",), ("SliceThickness", "FrameOfReferenceUID")])
def test_a_series_without_slice_thickness_or_frame_of_reference_is_read_from_positions_saying_once_what_was_missing(tmp_path, caplog, omit):
    geometry = SeriesGeometry(row_direction=oblique_directions()[0], column_direction=oblique_directions()[1], slice_spacing=2.5)
    hu = _hu()
    write_series(tmp_path, hu, geometry, omit=omit)
    with caplog.at_level("INFO", logger="medseg"):
        image = _read(tmp_path)
    np.testing.assert_allclose(image.affine, geometry.ras_affine(), atol=1e-4)
    np.testing.assert_array_equal(image.get_fdata(), hu)
    [record] = [record for record in caplog.records if record.name.startswith("medseg")]
    assert record.levelname == "WARNING" and f"has slices without {' and '.join(omit)}: read from ImagePositionPatient" in record.getMessage()


def test_a_complete_series_is_read_without_a_warning(tmp_path, caplog):
    write_series(tmp_path, _hu())
    with caplog.at_level("INFO", logger="medseg"):
        _read(tmp_path)
    assert not [record for record in caplog.records if record.name.startswith("medseg")]


def _slices_removed(tmp_path):
    files = write_series(tmp_path, _hu())
    files[3].unlink()


def _edit_slice(files, index: int, **attributes) -> None:
    import pydicom

    ds = pydicom.dcmread(files[index])
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    ds.save_as(files[index])


def _unevenly_spaced(tmp_path):
    files = write_series(tmp_path, _hu(), SeriesGeometry(slice_spacing=1.5))
    _edit_slice(files, 3, ImagePositionPatient=[-30.0, 12.5, 80.0 + 3 * 1.5 + 0.6])


def _mixed_orientations(tmp_path):
    _edit_slice(write_series(tmp_path, _hu()), 2, ImageOrientationPatient=[1.0, 0.0, 0.0, 0.0, 0.0, -1.0])


def _non_image(modality: str, sop_class: str):
    def make(tmp_path):
        write_series(tmp_path, _hu(), Modality=modality, SOPClassUID=sop_class)

    return make


def _multi_frame(tmp_path):
    write_series(tmp_path, _hu(), NumberOfFrames=6)


REFUSALS = {
    "missing slice": (_slices_removed, "slices missing, repeated or unevenly spaced: 5 slices 1.5 to 3 mm apart"),
    "uneven spacing": (_unevenly_spaced, "slices missing, repeated or unevenly spaced: 6 slices 0.9 to 2.1 mm apart"),
    "mixed orientations": (_mixed_orientations, "mixes slice orientations"),
    "SEG": (_non_image("SEG", SegmentationStorage), "is a SEG (Segmentation Storage) object, not an image series"),
    "RTSTRUCT": (_non_image("RTSTRUCT", RTStructureSetStorage), "is a RTSTRUCT (RT Structure Set Storage) object, not an image series"),
    "SR": (_non_image("SR", ComprehensiveSRStorage), "is a SR (Comprehensive SR Storage) object, not an image series"),
    "multi-frame": (_multi_frame, "is a multi-frame CT (CT Image Storage) file; medseg reads series of single-frame slices"),
}


@pytest.mark.parametrize("problem", REFUSALS)
def test_a_series_that_is_not_one_regular_image_volume_is_refused_with_one_line_naming_it(tmp_path, problem):
    make, message = REFUSALS[problem]
    make(tmp_path)
    (case,) = find_scans(tmp_path)
    with pytest.raises(MedsegError) as raised:
        read_series(case.name, case.images)
    text = str(raised.value)
    assert "\n" not in text and text.startswith(f"DICOM series {case.name} in {tmp_path}") and message in text


def test_without_the_dicom_extra_a_dicom_input_says_what_to_install(tmp_path, monkeypatch):
    write_series(tmp_path, _hu())
    monkeypatch.setitem(sys.modules, "pydicom", None)  # import pydicom now raises ImportError
    with pytest.raises(MedsegError, match=r'DICOM files; reading them needs DICOM support, which is not installed: pip install "medseg\[dicom\]"'):
        find_scans(tmp_path)
