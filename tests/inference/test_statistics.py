"""``medseg.infer --statistics`` and ``--preview``: volume in mL and mean intensity per class from the written label map
on the scan's own grid, a folder-wide JSON and CSV that reruns keep, and a preview PNG in radiological display."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import matplotlib.image
import nibabel as nib
import numpy as np
import pytest

from medseg.data.formats import Case
from medseg.inference.command import main
from medseg.inference.preview import PREVIEW_DPI, PREVIEW_INCHES, display_slices, largest_structure_centre, save_preview
from medseg.inference.statistics import STATISTICS_CSV, STATISTICS_JSON, class_statistics, scan_channels

from .conftest import CLASS1_HU, CLASS2_HU, phantom_hu, phantom_labels, save_scan

CLASSES = ("background", "box", "slab")
# 30 degrees about z, then voxels of 0.7 x 1.3 x 2.5 mm: a voxel is 2.275 mm^3 whatever the rotation
ROTATION = np.array([[np.cos(np.pi / 6), -np.sin(np.pi / 6), 0], [np.sin(np.pi / 6), np.cos(np.pi / 6), 0], [0, 0, 1]])
OBLIQUE = np.eye(4)
OBLIQUE[:3, :3] = ROTATION @ np.diag([0.7, 1.3, 2.5])
OBLIQUE[:3, 3] = (-20.0, 10.0, 5.0)
VOXEL_ML = 0.7 * 1.3 * 2.5 / 1000


def _box_labels() -> np.ndarray:
    labels = np.zeros((12, 10, 8), np.uint8)
    labels[2:7, 1:5, 1:6] = 1  # 5 x 4 x 5 = 100 voxels
    return labels


def test_volume_is_voxel_count_times_the_voxel_volume_of_an_oblique_anisotropic_grid():
    stats = class_statistics(_box_labels(), [np.zeros((12, 10, 8))], OBLIQUE, CLASSES, ["CT"])
    assert stats["box"]["voxels"] == 100
    assert stats["box"]["volume_ml"] == pytest.approx(100 * VOXEL_ML, rel=1e-12)


def test_mean_intensity_is_per_channel_under_the_label_and_an_empty_class_has_none():
    labels = _box_labels()
    first = np.where(labels == 1, 40.0, -900.0)
    second = np.arange(labels.size, dtype=np.float32).reshape(labels.shape)
    stats = class_statistics(labels, [first, second], OBLIQUE, CLASSES, ["T1", "T2"])
    assert stats["box"]["mean_intensity"] == {"T1": 40.0, "T2": pytest.approx(second[labels == 1].mean())}
    assert stats["slab"] == {"voxels": 0, "volume_ml": 0.0, "mean_intensity": {"T1": None, "T2": None}}
    assert "background" not in stats


def test_a_four_dimensional_scan_gives_one_channel_per_volume(tmp_path):
    voxels = np.stack([np.full((4, 5, 6), 1.0), np.full((4, 5, 6), 2.0)], axis=-1).astype(np.float32)
    path = save_scan(tmp_path / "two.nii.gz", voxels, np.eye(4))
    channels = scan_channels(Case("two", (path,)), nib.load(path))
    assert [channel.shape for channel in channels] == [(4, 5, 6)] * 2 and [float(c.mean()) for c in channels] == [1.0, 2.0]


def _segment(checkpoint: Path, source: Path, output: Path, *extra: str) -> int:
    return main(["--checkpoint", str(checkpoint), "--input", str(source), "--output", str(output), "--sw_batch_size", "2", *extra])


@pytest.fixture(scope="module")
def scans(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two phantom scans on an oblique, anisotropic grid."""
    folder = tmp_path_factory.mktemp("scans")
    hu = phantom_hu(phantom_labels((28, 26, 20)))
    affine = np.eye(4)
    affine[:3, :3] = ROTATION @ np.diag([1.5, 1.2, 2.0])
    for name in ("a", "b"):
        save_scan(folder / f"{name}.nii.gz", hu, affine)
    return folder


@pytest.fixture(scope="module")
def segmented(trained_checkpoint, scans, tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("out")
    assert _segment(trained_checkpoint, scans, output, "--statistics", "--preview") == 0
    return output


def test_statistics_are_measured_on_the_written_label_map_and_the_original_intensities(scans, segmented):
    stats = json.loads((segmented / STATISTICS_JSON).read_text())
    assert list(stats) == ["a", "b"] and list(stats["a"]) == ["box", "slab"]
    labels = np.asarray(nib.load(segmented / "a.nii.gz").dataobj)
    scan = nib.load(scans / "a.nii.gz")
    hu = np.asarray(scan.dataobj)
    for value, name, expected_hu in ((1, "box", CLASS1_HU), (2, "slab", CLASS2_HU)):
        count = int((labels == value).sum())
        assert count > 0
        assert stats["a"][name]["voxels"] == count
        assert stats["a"][name]["volume_ml"] == pytest.approx(count * abs(np.linalg.det(scan.affine[:3, :3])) / 1000, rel=1e-12)
        assert stats["a"][name]["mean_intensity"] == {"CT0": pytest.approx(float(hu[labels == value].mean()))}
        assert stats["a"][name]["mean_intensity"]["CT0"] == pytest.approx(expected_hu, abs=60)  # Hounsfield units, not normalised


def test_the_csv_has_one_row_per_case_and_class_matching_the_json(segmented):
    stats = json.loads((segmented / STATISTICS_JSON).read_text())
    with (segmented / STATISTICS_CSV).open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["case"], row["class"]) for row in rows] == [("a", "box"), ("a", "slab"), ("b", "box"), ("b", "slab")]
    assert list(rows[0]) == ["case", "class", "voxels", "volume_ml", "mean_intensity_CT0"]
    for row in rows:
        values = stats[row["case"]][row["class"]]
        assert int(row["voxels"]) == values["voxels"] and float(row["volume_ml"]) == values["volume_ml"]
        assert float(row["mean_intensity_CT0"]) == values["mean_intensity"]["CT0"]


def test_a_rerun_skips_done_scans_and_keeps_their_rows(trained_checkpoint, scans, tmp_path, capsys):
    source, output = tmp_path / "scans", tmp_path / "out"
    source.mkdir()
    (source / "a.nii.gz").write_bytes((scans / "a.nii.gz").read_bytes())
    assert _segment(trained_checkpoint, source, output, "--statistics") == 0
    first = json.loads((output / STATISTICS_JSON).read_text())
    (source / "b.nii.gz").write_bytes((scans / "b.nii.gz").read_bytes())
    capsys.readouterr()
    assert _segment(trained_checkpoint, source, output, "--statistics") == 0
    assert "1 done, 1 skipped" in capsys.readouterr().out
    second = json.loads((output / STATISTICS_JSON).read_text())
    assert list(second) == ["a", "b"] and second["a"] == first["a"]
    assert (output / STATISTICS_CSV).read_text().count("\na,") == 2


def test_statistics_or_a_preview_asked_for_later_redo_the_scans_without_them(trained_checkpoint, scans, tmp_path, capsys):
    output = tmp_path / "out"
    assert _segment(trained_checkpoint, scans, output) == 0
    assert not (output / STATISTICS_JSON).exists()
    for option in ("--statistics", "--preview"):
        capsys.readouterr()
        assert _segment(trained_checkpoint, scans, output, option) == 0
        assert "2 done, 0 skipped" in capsys.readouterr().out
    assert sorted(json.loads((output / STATISTICS_JSON).read_text())) == ["a", "b"]
    assert sorted(p.name for p in (output / "previews").iterdir()) == ["a.png", "b.png"]


def _coloured_pixels(path: Path) -> int:
    """Return the pixels of a PNG far from grey: the overlay's and the legend's colours."""
    rgb = matplotlib.image.imread(path)[..., :3]
    return int((rgb.max(axis=-1) - rgb.min(axis=-1) > 0.15).sum())


def test_the_preview_is_a_png_of_the_documented_size_with_the_labels_in_colour(segmented, tmp_path):
    preview = segmented / "previews" / "a.png"
    height, width = matplotlib.image.imread(preview).shape[:2]
    assert (width, height) == (PREVIEW_INCHES[0] * PREVIEW_DPI, PREVIEW_INCHES[1] * PREVIEW_DPI)
    labels = np.asarray(nib.load(segmented / "a.nii.gz").dataobj)
    save_preview(tmp_path / "empty.png", np.zeros_like(labels), labels.astype(np.float32), np.eye(4), CLASSES, "empty")
    assert _coloured_pixels(tmp_path / "empty.png") == 0
    assert _coloured_pixels(preview) > 2000


def test_slices_are_shown_in_radiological_display():
    """The patient's right is on the viewer's left in axial and coronal slices, anterior on the left of the sagittal."""
    volume = np.zeros((6, 7, 8))
    volume[5, 3, 4] = 1  # right (RAS x is largest at the patient's right)
    volume[2, 6, 4] = 2  # anterior
    volume[2, 3, 7] = 3  # superior
    axial, coronal, sagittal = display_slices(volume, (2, 3, 4))
    assert axial[3, 0] == 1 and axial[6, -3] == 2  # rows run posterior to anterior (origin lower): anterior up
    assert coronal[4, 0] == 1 and coronal[7, -3] == 3
    assert sagittal[4, 0] == 2 and sagittal[7, -4] == 3


def test_slices_cross_the_largest_structure():
    labels = np.zeros((30, 30, 30), np.uint8)
    labels[2:5, 2:5, 2:5] = 2
    labels[10:20, 12:18, 20:26] = 1  # most voxels
    labels[25:28, 25:28, 25:28] = 1  # a smaller part of the same class
    centre = largest_structure_centre(labels)
    assert labels[centre] == 1 and 10 <= centre[0] < 20 and 12 <= centre[1] < 18 and 20 <= centre[2] < 26


def test_a_dicom_series_gets_statistics_in_hounsfield_units_and_a_preview_beside_its_dicom_seg(trained_checkpoint, tmp_path):
    pytest.importorskip("pydicom")
    pytest.importorskip("highdicom")
    from medseg.testing.dicom_series import write_series

    hu = phantom_hu(phantom_labels((28, 26, 12)))
    write_series(tmp_path / "study" / "series", hu, slope=0.5, intercept=-2048.0)
    output = tmp_path / "out"
    assert _segment(trained_checkpoint, tmp_path / "study", output, "--output_format", "both", "--statistics", "--preview") == 0
    (name, classes), = json.loads((output / STATISTICS_JSON).read_text()).items()
    labels = np.asarray(nib.load(output / f"{name}.nii.gz").dataobj)
    assert (output / f"{name}.seg.dcm").is_file() and (output / "previews" / f"{name}.png").is_file()
    assert classes["box"]["voxels"] == int((labels == 1).sum()) > 0
    assert classes["box"]["volume_ml"] == pytest.approx(classes["box"]["voxels"] * 1.5**3 / 1000)
    assert classes["box"]["mean_intensity"]["CT0"] == pytest.approx(CLASS1_HU, abs=60)


def test_slices_cross_a_ring_whose_centre_of_mass_lies_outside_it():
    ring = np.zeros((40, 40, 10), np.uint8)
    ring[5:35, 5:35, 2:8] = 1
    ring[10:30, 10:30, 2:8] = 0
    assert ring[largest_structure_centre(ring)] == 1


def test_rows_of_labels_replaced_with_other_settings_go_and_are_measured_again_later(trained_checkpoint, scans, tmp_path, capsys):
    output = tmp_path / "out"
    assert _segment(trained_checkpoint, scans, output, "--statistics") == 0
    assert _segment(trained_checkpoint, scans, output, "--overwrite", "--sw_overlap", "0.5") == 0
    assert json.loads((output / STATISTICS_JSON).read_text()) == {}
    capsys.readouterr()
    assert _segment(trained_checkpoint, scans, output, "--statistics", "--sw_overlap", "0.5") == 0
    assert "2 done, 0 skipped" in capsys.readouterr().out


def test_a_rewritten_scan_loses_the_preview_and_probabilities_of_the_labels_it_replaced(trained_checkpoint, scans, tmp_path, capsys):
    output = tmp_path / "out"
    assert _segment(trained_checkpoint, scans, output, "--preview", "--probabilities") == 0
    assert (output / "previews" / "a.png").is_file() and (output / "probabilities" / "a.nii.gz").is_file()
    assert _segment(trained_checkpoint, scans, output, "--overwrite", "--sw_overlap", "0.5") == 0
    assert not (output / "previews" / "a.png").exists() and not (output / "probabilities" / "a.nii.gz").exists()
    capsys.readouterr()
    assert _segment(trained_checkpoint, scans, output, "--preview", "--sw_overlap", "0.5") == 0  # drawn again, of the new labels
    assert "2 done, 0 skipped" in capsys.readouterr().out and (output / "previews" / "a.png").is_file()
