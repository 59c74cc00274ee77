"""The demo path of the issue: train, segment a demo scan with the checkpoint, evaluate it against its label."""

from __future__ import annotations

import shutil

import nibabel as nib
import numpy as np

from medseg import train
from medseg.evaluate import evaluate
from medseg.infer import main
from tests.helpers.cli import tiny_train_args


def test_training_checkpoint_segments_a_demo_scan_on_its_grid_and_evaluates(demo_root, tmp_path):
    run = train.run(tiny_train_args(demo_root, tmp_path / "run") + ["--trainer.max_epochs=1"])
    scan = demo_root / "imagesTr" / "phantom_000.nii.gz"
    assert main(["--checkpoint", str(run.best_checkpoint), "--input", str(scan), "--output", str(tmp_path / "pred")]) == 0

    source, result = nib.load(scan), nib.load(tmp_path / "pred" / "phantom_000.nii.gz")
    assert result.shape == source.shape and np.array_equal(result.affine, source.affine)
    (tmp_path / "gt").mkdir()
    shutil.copy(demo_root / "labelsTr" / "phantom_000.nii.gz", tmp_path / "gt")
    [case] = evaluate(tmp_path / "pred", tmp_path / "gt").cases  # raises if the grids differ
    assert all(0.0 <= dice <= 1.0 for dice in case.dice if not np.isnan(dice))
