"""Evaluation: Dice and HD95 in mm per class against hand-computed values; grid mismatches are errors."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medseg.errors import MedsegError
from medseg.evaluation import evaluate, mean_over_cases
from medseg.evaluation.command import main
from medseg.recipe import Recipe
from tests.helpers.bad_scans import huge_header, with_block
from tests.helpers.faults import read_only

AFFINE = np.diag([1.0, 1.0, 2.0, 1.0])  # 2 mm slices: HD95 must count z steps double


def _save(path: Path, labels: np.ndarray, affine: np.ndarray = AFFINE) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(labels.astype(np.uint8), affine), path)


@pytest.fixture()
def folders(tmp_path: Path) -> tuple[Path, Path]:
    """Case c1: prediction keeps the lower half (z) of a 4x4x4 box and misplaces a one-voxel class 2 by 3 slices.

    Case c2: a perfect prediction with no class 2 anywhere.
    """
    truth, pred = np.zeros((10, 10, 10)), np.zeros((10, 10, 10))
    truth[2:6, 2:6, 2:6] = 1
    pred[2:6, 2:6, 2:4] = 1
    truth[8, 8, 1], pred[8, 8, 4] = 2, 2
    _save(tmp_path / "gt/c1.nii.gz", truth)
    _save(tmp_path / "pred/c1.nii.gz", pred)
    perfect = np.zeros((10, 10, 10))
    perfect[1:4, 1:5, 1:6] = 1
    _save(tmp_path / "gt/c2.nii.gz", perfect)
    _save(tmp_path / "pred/c2.nii.gz", perfect)
    return tmp_path / "pred", tmp_path / "gt"


def test_scores_equal_hand_computed_values(folders):
    result = evaluate(*folders)
    c1, c2 = result.cases
    # Dice class 1: 2 * 32 / (64 + 32). HD95 class 1: the box's top face (16 of its 56 surface voxels)
    # is 2 slices = 4 mm from the prediction. Class 2: disjoint voxels 3 slices = 6 mm apart.
    assert c1.dice == pytest.approx((2 / 3, 0.0))
    assert c1.hd95_mm == pytest.approx((4.0, 6.0))
    assert c2.dice == pytest.approx((1.0,)) and c2.hd95_mm == pytest.approx((0.0,))
    assert result.class_names == ["class_1", "class_2"]


def test_summary_gives_mean_and_std_over_cases_where_defined(folders):
    lines = evaluate(*folders).summary_lines()
    assert lines[1] == "class_1: Dice 0.8333 +- 0.1667 (n=2), HD95 2.0000 +- 2.0000 mm (n=2)"
    assert lines[2] == "class_2: Dice 0.0000 +- 0.0000 (n=1), HD95 6.0000 +- 0.0000 mm (n=1)"


def test_class_means_average_over_the_cases_where_a_score_is_defined(folders):
    result = evaluate(*folders)
    assert result.class_means("dice") == pytest.approx({"class_1": 5 / 6, "class_2": 0.0})
    assert result.class_means("hd95_mm") == pytest.approx({"class_1": 2.0, "class_2": 6.0})


def test_mean_over_cases_skips_undefined_scores_and_is_nan_for_a_class_defined_nowhere():
    # the one mean Dice over cases that evaluation, cross-validation and postprocessing report
    means = mean_over_cases([(1.0, math.nan, math.nan), (0.5,), (0.0, math.nan, math.nan)], 3)
    np.testing.assert_array_equal(means, [0.5, math.nan, math.nan])


def test_cli_writes_per_case_csv_with_nan_for_a_class_absent_from_both(folders, tmp_path, capsys):
    pred, gt = folders
    assert main(["--pred", str(pred), "--gt", str(gt), "--output", str(tmp_path / "scores.csv")]) == 0
    rows = list(csv.DictReader((tmp_path / "scores.csv").open()))
    assert [row["case"] for row in rows] == ["c1", "c2"]
    assert float(rows[0]["hd95_mm_class_2"]) == 6.0 and math.isnan(float(rows[1]["dice_class_2"]))
    assert "class_1: Dice 0.8333" in capsys.readouterr().out


def test_class_names_come_from_a_dataset_file(folders, tmp_path):
    pred, gt = folders
    spec = {"modality": {"0": "CT"}, "labels": {"0": "background", "1": "liver", "2": "tumour"}, "training": [
        {"image": f"./images/{c}.nii.gz", "label": f"./gt/{c}.nii.gz"} for c in ("c1", "c2")]}
    (tmp_path / "dataset.json").write_text(json.dumps(spec))
    assert evaluate(pred, tmp_path / "dataset.json").class_names == ["liver", "tumour"]


def test_class_names_come_from_the_recipe_inference_wrote_beside_the_predictions(folders):
    pred, gt = folders
    recipe = Recipe("UNet", {}, ("CT",), ("background", "spleen", "cyst"), (16, 16, 16))
    (pred / "recipe.json").write_text(json.dumps(recipe.to_dict()))
    assert evaluate(pred, gt).class_names == ["spleen", "cyst"]


def test_mismatched_grid_is_an_error_naming_both_files(folders, capsys):
    pred, gt = folders
    _save(pred / "c2.nii.gz", np.zeros((10, 10, 10)), np.diag([1.0, 1.0, 2.5, 1.0]))
    assert main(["--pred", str(pred), "--gt", str(gt)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("medseg: error: prediction ") and str(pred / "c2.nii.gz") in err and str(gt / "c2.nii.gz") in err
    assert "\n" not in err


def test_prediction_without_ground_truth_is_an_error(folders):
    pred, gt = folders
    _save(pred / "c3.nii.gz", np.zeros((10, 10, 10)))
    with pytest.raises(MedsegError, match="no ground truth .* for prediction\\(s\\) c3.nii.gz"):
        evaluate(pred, gt)


def test_a_header_claiming_more_voxels_than_its_file_holds_is_one_line_not_a_memory_error(folders, capsys):
    pred, gt = folders
    huge_header(gt / "c2.nii.gz")
    assert main(["--pred", str(pred), "--gt", str(gt)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"medseg: error: {gt / 'c2.nii.gz'}: header claims 100000x100000x100000 voxels") and "\n" not in err


def test_a_prediction_with_nan_voxels_is_refused_not_scored(folders):
    pred, _ = folders
    with_block(pred / "c1.nii.gz", np.zeros((10, 10, 10)), AFFINE, np.nan)
    with pytest.raises(MedsegError, match=r"c1\.nii\.gz: 64 voxel\(s\) are NaN or infinite"):
        evaluate(*folders)


def test_a_read_only_output_is_one_line_naming_the_file(folders, tmp_path, monkeypatch, capsys):
    read_only(monkeypatch, tmp_path / "scores")
    assert main(["--pred", str(folders[0]), "--gt", str(folders[1]), "--output", str(tmp_path / "scores" / "evaluation.csv")]) == 1
    assert capsys.readouterr().err.strip() == (
        f"medseg: error: cannot write {tmp_path / 'scores' / 'evaluation.csv'}: Read-only file system: choose a folder you can write to (or fix its permissions) and rerun (nothing there was changed)"
    )


def test_an_output_that_cannot_be_written_is_one_line_naming_it(folders, tmp_path, capsys):
    pred, gt = folders
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    output = blocker / "scores.csv"  # inside a file: unwritable for root too, where a read-only folder is not
    assert main(["--pred", str(pred), "--gt", str(gt), "--output", str(output)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"medseg: error: cannot write {output}") and "\n" not in err
