"""``--data.fold all``: every fold trains in its own run folder and predicts its validation cases on their grids; the
summary and the postprocessing decision sit beside the folds; a rerun resumes, and a failed fold is one line."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from medseg.cross_validation import asks_for_all_folds, without_fold
from medseg.data.formats import read_dataset
from medseg.data.split import split_cases
from medseg.evaluate import evaluate
from medseg.inference.postprocessing import Postprocessing
from medseg.train import main
from tests.helpers.cli import run_main, tiny_train_args


@pytest.mark.parametrize("args, expected", [(["--data.fold", "all"], True), (["--data.fold=all"], True), (["--data.fold=1"], False), (["all"], False)])
def test_all_folds_are_asked_for_either_way_of_writing_the_option(args, expected):
    assert asks_for_all_folds(args) is expected
    assert without_fold(["--a=1", *args]) == (["--a=1"] if args[0].startswith("--data.fold") else ["--a=1", *args])


def test_every_fold_trains_predicts_and_is_summarised_and_a_rerun_trains_nothing_again(demo_root, tmp_path, capsys):
    args = tiny_train_args(demo_root, tmp_path) + ["--data.num_folds=2", "--trainer.max_epochs=1", "--data.fold=all"]
    code, out, err = run_main(main, args, capsys)
    assert code == 0, err[-3000:]
    folder = tmp_path / "medseg_cv"
    summary = json.loads((folder / "summary.json").read_text())
    cases = read_dataset(demo_root).cases
    for fold in (0, 1):
        _, validation = split_cases(cases, 2, fold, 0)
        predicted = sorted(p.name for p in (folder / f"fold_{fold}" / "validation").glob("*.nii.gz"))
        assert predicted == sorted(f"{case.name}.nii.gz" for case in validation)
        for case in validation:  # on each scan's own grid
            assert nib.load(folder / f"fold_{fold}" / "validation" / f"{case.name}.nii.gz").shape == nib.load(case.images[0]).shape
        scored = evaluate(folder / f"fold_{fold}" / "validation", demo_root)
        assert summary["folds"][fold]["dice"]["organ"] == pytest.approx(np.nanmean(scored.column("dice", 0)))
        assert (folder / f"fold_{fold}" / "validation" / "evaluation.csv").is_file()
    pooled = [summary["folds"][f]["dice"]["lesion"] * summary["folds"][f]["cases"] for f in (0, 1)]
    assert summary["pooled"]["cases"] == len(cases) and summary["pooled"]["dice"]["lesion"] == pytest.approx(sum(pooled) / len(cases))
    assert Postprocessing.read(folder / "postprocessing.json").class_names == ("background", "organ", "lesion")
    assert "Cross-validation Dice (2 folds)" in out and "pooled (6 cases)" in out

    checkpoints = {p: p.stat().st_mtime_ns for p in folder.rglob("*.ckpt")}
    code, out, err = run_main(main, args, capsys)
    assert code == 0 and "Cross-validation Dice (2 folds)" in out
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*.ckpt")} == checkpoints  # no fold trained again


def test_a_fold_that_fails_is_one_line_and_the_finished_folds_are_kept(demo_root, tmp_path, capsys):
    folder = tmp_path / "medseg_cv"
    done = folder / "fold_0" / "validation"
    done.mkdir(parents=True)
    (done / "evaluation.csv").write_text("case\n")  # fold 0 finished before
    args = tiny_train_args(demo_root, tmp_path) + ["--data.num_folds=2", "--data.fold=all", "--trainer.callbacks+=tests.helpers.crash.DiskFullAtEpochEnd"]
    code, _, err = run_main(main, args, capsys)
    assert code == 1
    assert err.strip().splitlines()[-1] == (
        f"medseg: error: fold 1 failed (exit code 1; its messages are above); the other folds' runs in {folder} are kept: rerun the same command to resume"
    )
    assert (done / "evaluation.csv").read_text() == "case\n" and not (folder / "summary.json").exists()
