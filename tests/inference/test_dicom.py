"""DICOM series in, DICOM-SEG out: a folder of series (and NIfTI scans) is segmented on each series' own grid, a broken
series fails alone, and the DICOM-SEG read back with highdicom holds the NIfTI labels voxel for voxel."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medseg import __version__
from medseg.data.formats import find_scans
from medseg.inference.command import main

pytest.importorskip("pydicom")
pytest.importorskip("highdicom")  # medseg's DICOM modules need both (the "dicom" extra)
from medseg.testing.dicom_series import SeriesGeometry, oblique_directions, write_series  # noqa: E402
import highdicom as hd  # noqa: E402  (after the skip without the DICOM extra)
import pydicom  # noqa: E402

from .conftest import SPACING_MM, phantom_hu, save_scan

SHAPE = (32, 32, 16)
OBLIQUE = SeriesGeometry(row_direction=oblique_directions()[0], column_direction=oblique_directions()[1],
                         pixel_spacing=(SPACING_MM, SPACING_MM), slice_spacing=SPACING_MM)


def _labels() -> np.ndarray:
    labels = np.zeros(SHAPE, np.uint8)
    labels[6:16, 5:20, 3:12] = 1
    labels[18:28, 12:27, 6:14] = 2
    return labels


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A folder of two phantom series (oblique; rescaled), a NIfTI of the oblique one's voxels, and a series missing a slice."""
    root = tmp_path_factory.mktemp("study")
    hu = phantom_hu(_labels())
    files = {
        "oblique": write_series(root / "oblique", hu, OBLIQUE, description="CT oblique"),
        "rescaled": write_series(root / "rescaled", hu, slope=0.5, intercept=-2048.0, description="CT rescaled"),
        "broken": write_series(root / "broken", hu, description="CT broken"),
    }
    files["broken"][5].unlink()
    save_scan(root / "oblique_as_nifti.nii.gz", hu, OBLIQUE.ras_affine())
    names = {case.images[0].parent.name: case.name for case in find_scans(root) if case.dicom}
    return {"root": root, "files": files, "names": names}


def _digest(folder: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def segmented(trained_checkpoint, study, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The study segmented into NIfTI and DICOM-SEG, then again into NIfTI only (which does the NIfTI scan, as a
    DICOM-SEG needs a series, and skips the series already done)."""
    output = tmp_path_factory.mktemp("labels")
    before = _digest(study["root"])
    run = ["--checkpoint", str(trained_checkpoint), "--input", str(study["root"]), "--output", str(output), "--window.batch_size", "2"]
    codes = {fmt: main([*run, "--output_format", fmt]) for fmt in ("both", "nifti")}
    return {"output": output, "codes": codes, "inputs_unchanged": _digest(study["root"]) == before}


def test_a_series_is_segmented_on_its_own_grid_like_a_nifti_of_the_same_voxels(study, segmented):
    output, name = segmented["output"], study["names"]["oblique"]
    from_dicom, from_nifti = nib.load(output / f"{name}.nii.gz"), nib.load(output / "oblique_as_nifti.nii.gz")
    np.testing.assert_allclose(from_dicom.affine, OBLIQUE.ras_affine(), atol=1e-4)
    assert from_dicom.shape == SHAPE and nib.aff2axcodes(from_dicom.affine) == nib.aff2axcodes(OBLIQUE.ras_affine())
    np.testing.assert_array_equal(np.asarray(from_dicom.dataobj), _labels())
    np.testing.assert_array_equal(np.asarray(from_dicom.dataobj), np.asarray(from_nifti.dataobj))


def test_rescaled_series_is_segmented_from_its_hounsfield_units(study, segmented):
    labels = nib.load(segmented["output"] / f"{study['names']['rescaled']}.nii.gz")
    np.testing.assert_array_equal(np.asarray(labels.dataobj), _labels())


def test_a_broken_series_fails_while_the_others_finish(study, segmented):
    assert segmented["codes"] == {"both": 1, "nifti": 1}
    names = study["names"]
    assert not (segmented["output"] / f"{names['broken']}.nii.gz").exists()
    assert not (segmented["output"] / f"{names['broken']}.seg.dcm").exists()
    for name in (names["oblique"], names["rescaled"]):
        assert (segmented["output"] / f"{name}.nii.gz").exists() and (segmented["output"] / f"{name}.seg.dcm").exists()


def test_the_summary_names_the_broken_series_and_the_nifti_scan_without_a_series(trained_checkpoint, study, tmp_path, capsys):
    code = main(["--checkpoint", str(trained_checkpoint), "--input", str(study["root"]), "--output", str(tmp_path), "--output_format", "dicom-seg"])
    out = capsys.readouterr().out.splitlines()
    assert code == 1 and out[0] == "2 done, 0 skipped, 2 failed"
    broken = next(line for line in out if study["names"]["broken"] in line)
    assert "slices missing, repeated or unevenly spaced: 15 slices 1.5 to 3 mm apart" in broken
    assert any(line.startswith("failed oblique_as_nifti: a NIfTI scan has no DICOM series for a DICOM-SEG to reference") for line in out)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"{study['names'][n]}.seg.dcm" for n in ("oblique", "rescaled")] + ["recipe.json"])


@pytest.mark.parametrize("series", ["oblique", "rescaled"])
def test_the_dicom_seg_read_back_holds_the_nifti_labels_voxel_for_voxel_frame_by_source_slice(study, segmented, series):
    name = study["names"][series]
    labels = np.asarray(nib.load(segmented["output"] / f"{name}.nii.gz").dataobj)
    seg = hd.seg.segread(segmented["output"] / f"{name}.seg.dcm")
    sources = [pydicom.dcmread(path, stop_before_pixels=True) for path in study["files"][series]]  # by slice position
    pixels = seg.get_pixels_by_source_instance(
        [ds.SOPInstanceUID for ds in sources], combine_segments=True, assert_missing_frames_are_empty=True
    )
    np.testing.assert_array_equal(pixels.transpose(2, 1, 0), labels)  # (slices, rows, columns) -> the NIfTI's voxels
    assert seg.FrameOfReferenceUID == sources[0].FrameOfReferenceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == sources[0].SeriesInstanceUID
    foreground = sum(int(np.any(labels[:, :, k] == value)) for k in range(SHAPE[2]) for value in (1, 2))
    assert seg.NumberOfFrames == foreground < 2 * SHAPE[2]  # empty frames are left out


def test_the_dicom_seg_names_each_class_and_the_algorithm(study, segmented, trained_checkpoint):
    seg = hd.seg.segread(segmented["output"] / f"{study['names']['oblique']}.seg.dcm")
    assert [segment.SegmentLabel for segment in seg.SegmentSequence] == ["box", "slab"]
    algorithm = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("medseg", __version__)
    assert trained_checkpoint.name in algorithm.AlgorithmParameters
    assert seg.SegmentSequence[0].SegmentAlgorithmType == "AUTOMATIC"


def test_inputs_are_left_as_they_were_and_no_temporary_files_remain(segmented):
    assert segmented["inputs_unchanged"]
    assert not any(p.name.startswith(".") for p in segmented["output"].iterdir())


def test_a_series_without_slice_thickness_and_frame_of_reference_gets_its_nifti_and_a_dicom_seg(trained_checkpoint, tmp_path):
    """SimpleITK's usual recipe writes neither tag; the DICOM-SEG records the slice spacing and a frame of reference
    derived from the series, the same on every run."""
    files = write_series(tmp_path / "study", phantom_hu(_labels()), OBLIQUE, omit=("SliceThickness", "FrameOfReferenceUID"))
    [case] = find_scans(tmp_path / "study")
    frames = []
    for output in (tmp_path / "first", tmp_path / "second"):
        code = main(["--checkpoint", str(trained_checkpoint), "--input", str(tmp_path / "study"), "--output", str(output),
                     "--window.batch_size", "2", "--output_format", "both"])
        assert code == 0
        labels = np.asarray(nib.load(output / f"{case.name}.nii.gz").dataobj)
        np.testing.assert_array_equal(labels, _labels())
        seg = hd.seg.segread(output / f"{case.name}.seg.dcm")
        sources = [pydicom.dcmread(path, stop_before_pixels=True) for path in files]
        pixels = seg.get_pixels_by_source_instance([ds.SOPInstanceUID for ds in sources], combine_segments=True)
        np.testing.assert_array_equal(pixels.transpose(2, 1, 0), labels)
        thickness = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].SliceThickness
        assert float(thickness) == pytest.approx(SPACING_MM, abs=1e-6)
        frames.append(seg.FrameOfReferenceUID)
    assert frames[0] == frames[1] and "FrameOfReferenceUID" not in pydicom.dcmread(files[0])


def test_both_formats_write_what_each_source_can_and_say_so_once(trained_checkpoint, study, tmp_path, capsys):
    code = main(["--checkpoint", str(trained_checkpoint), "--input", str(study["root"]), "--output", str(tmp_path), "--output_format", "both"])
    captured = capsys.readouterr()
    assert code == 1 and captured.out.splitlines()[0] == "3 done, 0 skipped, 1 failed"  # the broken series alone fails
    assert captured.err.count("1 NIfTI scan(s) get a NIfTI label map only: a DICOM-SEG needs a DICOM series") == 1
    assert (tmp_path / "oblique_as_nifti.nii.gz").is_file() and not (tmp_path / "oblique_as_nifti.seg.dcm").exists()
