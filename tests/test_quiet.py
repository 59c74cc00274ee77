"""A user sees medseg's own lines: no other library's tips or warnings that they cannot act on, and ``--help``
answers without loading torch, MONAI or Lightning."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medseg.errors import run_command
from medseg.evaluation.command import main as evaluate_main
from tests.helpers.cli import REPO, run_main, run_module, tiny_train_args

LIBRARY_NOISE = [
    "Tip: For seamless cloud logging",  # Lightning's litlogger advertisement
    "LeafSpec",  # a deprecation inside Lightning
    "`weights_only` was not set",
    "is smaller than the logging interval",  # the per-step loss is still logged, every log_every_n_steps steps
    "is not supported by the model summary",
    "always_return_as_numpy",  # MONAI's Hausdorff distance, in the final validation
    "Trying to infer the `batch_size`",  # a request to change medseg's code
]


@pytest.mark.slow
def test_training_shows_no_library_tips_or_warnings(demo_root: Path, tmp_path: Path) -> None:
    # bf16 on the CPU: Lightning's model summary warns about it; 3 batches an epoch: fewer than the logging interval
    done = run_module("medseg.train", *tiny_train_args(demo_root, tmp_path), "--trainer.max_epochs=1",
                      env={**os.environ, "MEDSEG_CPU_BF16": "1"})
    assert done.returncode == 0, done.stderr
    printed = done.stdout + done.stderr
    assert [noise for noise in LIBRARY_NOISE if noise in printed] == []
    assert "Validation Dice" in done.stdout  # medseg's own lines are still there


def test_commands_still_show_warnings_that_are_not_a_librarys_own() -> None:
    # the same words as a hidden Lightning warning, from elsewhere: medseg's code or a check of the user's data
    def warn(args: list[str]) -> None:
        warnings.warn("The number of training batches (3) is smaller than the logging interval", UserWarning)

    with pytest.warns(UserWarning, match="logging interval"):
        run_command(warn, [])


@pytest.mark.filterwarnings("error::FutureWarning")
def test_evaluate_shows_no_library_future_warning(tmp_path: Path, capsys) -> None:
    truth = np.zeros((12, 12, 8), np.uint8)
    truth[2:8, 2:8, 2:6] = 1
    prediction = truth.copy()
    prediction[2:9, 2:8, 2:6] = 1
    for folder, labels in (("pred", prediction), ("gt", truth)):
        (tmp_path / folder).mkdir()
        nib.save(nib.Nifti1Image(labels, np.diag([1.5, 1.5, 3.0, 1.0])), tmp_path / folder / "case_0.nii.gz")
    code, _, err = run_main(evaluate_main, ["--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt")], capsys)
    assert code == 0, err
    with open(tmp_path / "pred" / "evaluation.csv", newline="") as table:
        [scores] = csv.DictReader(table)
    assert float(scores["hd95_mm_class_1"]) == pytest.approx(1.5, abs=1e-4)  # one extra row of voxels, 1.5 mm apart


@pytest.mark.parametrize("module", ["medseg.train", "medseg.infer", "medseg.evaluate", "medseg.postprocess", "medseg.plan", "medseg.memory", "medseg.export"])
def test_help_loads_neither_torch_nor_monai_nor_lightning(module: str) -> None:
    # runs the module as `python -m` does, then lists the heavy libraries that --help loaded
    script = (
        "import runpy, sys\n"
        f"sys.argv = [{module!r}, '--help']\n"
        "try:\n"
        f"    runpy.run_module({module!r}, run_name='__main__', alter_sys=True)\n"
        "except SystemExit as stop:\n"
        "    assert stop.code == 0, stop.code\n"
        "print([name for name in ('torch', 'monai', 'lightning') if name in sys.modules])\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "usage: python -m " in done.stdout
    assert done.stdout.strip().splitlines()[-1] == "[]"

