"""The Dice a training run prints is that of its validated checkpoint's label maps on the validation scans' own grids, as
``medseg.infer`` + ``medseg.evaluate`` give it, also when training validated on a resampled grid or never validated."""

from __future__ import annotations

import json

import nibabel as nib
import pytest
import yaml

from medseg.data.formats import read_dataset
from medseg.data.split import split_cases
from medseg.evaluation import evaluate
from medseg.inference import command as infer
from medseg.io.nifti import same_grid
from medseg import training as train
from tests.helpers.cli import tiny_train_args

# The same checkpoint, windows and scoring code as medseg.infer + medseg.evaluate: equal up to float rounding.
SAME_PATH_TOLERANCE = 1e-6


def _validation_cases(run_folder, demo_root):
    """Return the validation cases of the run in ``run_folder``, as its config.yaml splits the dataset."""
    data = yaml.safe_load((run_folder / "config.yaml").read_text())["data"]
    return split_cases(read_dataset(demo_root).cases, data["num_folds"], data["fold"], data["split_seed"])[1]


def _infer_and_evaluate(checkpoint, cases, demo_root, tmp_path):
    """Return medseg.evaluate's scores of medseg.infer's label maps of ``cases`` made with ``checkpoint``."""
    scans, predictions = tmp_path / "scans", tmp_path / "predictions"
    scans.mkdir()
    for case in cases:
        (scans / case.images[0].name).symlink_to(case.images[0])
    assert infer.main(["--checkpoint", str(checkpoint), "--input", str(scans), "--output", str(predictions)]) == 0
    return evaluate(predictions, demo_root)


def test_the_printed_dice_is_that_of_the_best_checkpoints_label_maps_on_the_scans_own_grids(demo_root, tmp_path, capsys):
    # the default spacing resamples the demo scans (1.1-1.4 x 1.1-1.4 x 2.5-3.5 mm) to 1.5 x 1.5 x 3 mm for training
    result = train.run(tiny_train_args(demo_root, tmp_path / "runs"))
    printed = capsys.readouterr().out
    final = result.final_validation
    assert final.checkpoint == result.best_checkpoint and final.folder == result.log_dir / "validation"

    val_cases = _validation_cases(result.log_dir, demo_root)
    expected = _infer_and_evaluate(result.best_checkpoint, val_cases, demo_root, tmp_path).class_means("dice")
    assert set(expected) == {"organ", "lesion"}
    for name, value in expected.items():
        assert final.dice()[name] == pytest.approx(value, abs=SAME_PATH_TOLERANCE)
        assert f"  {name:<6}  {value:.4f}" in printed
    assert f"Validation Dice of the best checkpoint, on the {len(val_cases)} validation scans' own grids" in printed
    assert (final.folder / "evaluation.csv").is_file()
    for case in val_cases:
        written, scan = nib.load(final.folder / f"{case.name}.nii.gz"), nib.load(case.images[0])
        assert written.shape == scan.shape and same_grid(written, scan)


def test_a_run_shorter_than_its_validation_interval_validates_its_last_checkpoint_which_inference_of_the_run_uses(demo_root, tmp_path, capsys):
    result = train.run(tiny_train_args(demo_root, tmp_path / "runs") + ["--trainer.max_epochs=1", "--trainer.check_val_every_n_epoch=5"])
    printed = capsys.readouterr().out
    assert result.best_checkpoint is None and result.final_validation.checkpoint == result.last_checkpoint
    assert f"Best checkpoint: none (medseg.infer --checkpoint {result.log_dir} takes the last checkpoint instead)" in printed

    expected = _infer_and_evaluate(result.log_dir, _validation_cases(result.log_dir, demo_root), demo_root, tmp_path).class_means("dice")
    for name, value in expected.items():
        assert result.final_validation.dice()[name] == pytest.approx(value, abs=SAME_PATH_TOLERANCE)
        assert f"  {name:<6}  {value:.4f}" in printed
    assert json.loads((tmp_path / "predictions" / "recipe.json").read_text())["models"] == [str(result.last_checkpoint)]
