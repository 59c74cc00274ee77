"""``--data.fold all``: every fold trains in its own run folder, whose final validation predicts its validation cases on
their grids; the summary and the postprocessing decision sit beside the folds; a rerun with the same options resumes,
one with other options is refused unless ``--retrain`` asks for it, and a failed fold is one line."""

from __future__ import annotations

import json
import logging

import nibabel as nib
import numpy as np
import pytest

from medseg.data.formats import read_dataset
from medseg.data.split import split_cases
from medseg.errors import MedsegError
from medseg.evaluation import evaluate
from medseg.inference import command as infer
from medseg.inference.postprocessing import Postprocessing
from medseg.training.cli import build_cli
from medseg.training.command import main
from medseg.training.cross_validation import asked_options, folds_with_other_options, keep_split
from tests.helpers.cli import run_main, tiny_train_args


def test_every_fold_of_a_run_too_short_to_validate_is_validated_summarised_and_inferred_and_a_rerun_trains_nothing_again(demo_root, tmp_path, capfd, caplog):
    # one epoch, validation every fifth: no fold validates during training, so none has a best checkpoint
    args = tiny_train_args(demo_root, tmp_path) + ["--data.num_folds=2", "--trainer.max_epochs=1", "--trainer.check_val_every_n_epoch=5", "--data.fold=all"]
    code, out, err = run_main(main, args, capfd)  # capfd: the folds' own processes print too
    assert code == 0, err[-3000:]
    folder = tmp_path / "medseg_cv"
    summary = json.loads((folder / "summary.json").read_text())
    cases = read_dataset(demo_root).cases
    for fold in (0, 1):
        _, validation = split_cases(cases, 2, fold, 0)
        predictions = folder / f"fold_{fold}" / "version_0" / "validation"  # the fold run's final validation
        assert sorted(p.name for p in predictions.glob("*.nii.gz")) == sorted(f"{case.name}.nii.gz" for case in validation)
        for case in validation:  # on each scan's own grid
            assert nib.load(predictions / f"{case.name}.nii.gz").shape == nib.load(case.images[0]).shape
        scored = evaluate(predictions, demo_root)
        organ = float(np.nanmean(scored.column("dice", 0)))
        assert summary["folds"][fold]["dice"]["organ"] == pytest.approx(organ)
        assert f"  organ   {organ:.4f}" in out  # what the fold's run printed
        assert (predictions / "evaluation.csv").is_file()
    assert out.count("Validation Dice of the last weights (no validation ran during training") == 2
    written = json.loads((folder / "splits_final.json").read_text())  # the folds' split, which a rerun reads back
    assert [fold["val"] for fold in written] == [[case.name for case in split_cases(cases, 2, fold, 0)[1]] for fold in (0, 1)]
    pooled = [summary["folds"][f]["dice"]["lesion"] * summary["folds"][f]["cases"] for f in (0, 1)]
    assert summary["pooled"]["cases"] == len(cases) and summary["pooled"]["dice"]["lesion"] == pytest.approx(sum(pooled) / len(cases))
    assert Postprocessing.read(folder / "postprocessing.json").class_names == ("background", "organ", "lesion")
    assert "Cross-validation Dice (2 folds)" in out and "pooled (6 cases)" in out

    suggested = f"python -m medseg.infer --checkpoint {folder} --input ... --output ..."
    assert suggested in out
    assert infer.main(["--checkpoint", str(folder), "--input", str(cases[0].images[0]), "--output", str(tmp_path / "predicted")]) == 0
    members = json.loads((tmp_path / "predicted" / "recipe.json").read_text())["models"]
    assert members == [str(folder / f"fold_{fold}" / "version_0" / "checkpoints" / "last.ckpt") for fold in (0, 1)]

    checkpoints = {p: p.stat().st_mtime_ns for p in folder.rglob("*.ckpt")}
    caplog.set_level(logging.INFO, logger="medseg")
    code, out, err = run_main(main, args, capfd)
    assert code == 0 and "Cross-validation Dice (2 folds)" in out
    assert "fold 1: done before with these options" in caplog.text
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*.ckpt")} == checkpoints  # no fold trained again


def _fold_done_with(folder, fold: int, options: dict) -> None:
    """Make ``folder/fold_<fold>`` look finished (its final validation written) with ``options`` recorded."""
    validation = folder / f"fold_{fold}" / "version_0" / "validation"
    validation.mkdir(parents=True)
    (validation / "evaluation.csv").write_text("case\n")
    (folder / f"fold_{fold}" / "fold_options.json").write_text(json.dumps(options))


def _options(args: list[str]) -> dict:
    """Return the options a fold of ``args`` (training options, ``--data.fold all`` not among them) records, as
    cross-validation reads them."""
    probe_args = [*args, "--data.fold=0"]
    return asked_options(build_cli(probe_args), probe_args)


def test_a_rerun_with_other_options_is_refused_naming_them_and_reuses_nothing(demo_root, tmp_path, capsys):
    args = tiny_train_args(demo_root, tmp_path) + ["--data.num_folds=2"]
    folder = tmp_path / "medseg_cv"
    earlier = {**_options(args), "trainer.max_epochs": 3}
    _fold_done_with(folder, 0, earlier)
    _fold_done_with(folder, 2, earlier)  # of an earlier run with more folds: an ensemble of the folder would read it too
    code, _, err = run_main(main, [*args, "--data.fold=all"], capsys)
    assert code == 1
    assert err.strip().splitlines()[-1] == (
        f"medseg: error: {folder} holds folds trained with other options (folds 0, 2: trainer.max_epochs 3 -> 2): rerun with --retrain to "
        f"train them again (their runs are moved to {tmp_path / 'medseg_cv_replaced'}), or choose another --trainer.logger.init_args.name"
    )
    assert json.loads((folder / "fold_0" / "fold_options.json").read_text()) == earlier and not (folder / "fold_1").exists()


def test_a_fold_of_the_previous_release_compares_its_model_keys_under_their_current_names(demo_root, tmp_path):
    options = _options(tiny_train_args(demo_root, tmp_path))
    renamed = {"model.window.overlap": "model.sw_overlap", "model.optimizer.learning_rate": "model.learning_rate"}
    recorded = {renamed.get(name, name): value for name, value in options.items()}
    _fold_done_with(tmp_path / "cv", 0, {**recorded, "model.sw_overlap": 0.5})
    assert folds_with_other_options(tmp_path / "cv", options) == {0: "model.window.overlap 0.5 -> 0.25"}


def test_retrain_moves_the_folds_trained_with_other_options_aside_and_trains_them_again(demo_root, tmp_path, capsys):
    args = tiny_train_args(demo_root, tmp_path) + ["--data.num_folds=2", "--trainer.callbacks+=tests.helpers.crash.DiskFullAtEpochEnd"]
    folder = tmp_path / "medseg_cv"
    now = _options(args)
    _fold_done_with(folder, 0, {**now, "trainer.max_epochs": 3})
    (folder / "summary.json").write_text("{}")  # made with the earlier fold 0: no longer describes the folder
    code, _, err = run_main(main, [*args, "--data.fold", "all", "--retrain"], capsys)
    assert code == 1 and "fold 0 failed (exit code 1" in err.strip().splitlines()[-1]  # it trained again, and crashed on purpose
    [aside] = (tmp_path / "medseg_cv_replaced").iterdir()
    assert (aside / "fold_0" / "version_0" / "validation" / "evaluation.csv").read_text() == "case\n" and (aside / "summary.json").is_file()
    assert json.loads((folder / "fold_0" / "fold_options.json").read_text()) == now and not (folder / "summary.json").exists()


def test_a_fold_that_fails_is_one_line_and_the_finished_folds_are_kept(demo_root, tmp_path, capsys):
    folder = tmp_path / "medseg_cv"
    done = folder / "fold_0" / "version_0" / "validation"
    done.mkdir(parents=True)
    (done / "evaluation.csv").write_text("case\n")  # fold 0 finished before (by a medseg that recorded no options)
    args = tiny_train_args(demo_root, tmp_path) + ["--data.num_folds=2", "--data.fold=all", "--trainer.callbacks+=tests.helpers.crash.DiskFullAtEpochEnd"]
    code, _, err = run_main(main, args, capsys)
    assert code == 1
    assert err.strip().splitlines()[-1] == (
        f"medseg: error: fold 1 failed (exit code 1; its messages are above); the other folds' runs in {folder} are kept: rerun the same command to resume"
    )
    assert (done / "evaluation.csv").read_text() == "case\n" and not (folder / "summary.json").exists()


def test_a_given_split_file_is_copied_into_the_cross_validation_folder_and_a_different_one_later_is_refused(tmp_path):
    folder, given = tmp_path / "medseg_cv", tmp_path / "splits_final.json"
    folds = [{"train": ["a"], "val": ["b"]}, {"train": ["b"], "val": ["a"]}]
    given.write_text(json.dumps(folds))
    assert keep_split(folder, given) == folder / "splits_final.json" and json.loads((folder / "splits_final.json").read_text()) == folds
    assert keep_split(folder, None) == folder / "splits_final.json"  # no split given: the folder's, read back
    given.write_text(json.dumps(folds[::-1]))
    with pytest.raises(MedsegError) as refused:
        keep_split(folder, given)
    assert str(refused.value) == f"{given} differs from {folder / 'splits_final.json'}, the split this folder's folds train with: move {folder} away to cross-validate with it"
    assert json.loads((folder / "splits_final.json").read_text()) == folds
