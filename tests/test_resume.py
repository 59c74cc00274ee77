"""Fault tolerance: a run killed mid-epoch and resumed with --ckpt_path last ends with the same weights."""

import logging
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from medseg import train
from medseg.errors import MedsegError
from medseg.training import cli
from tests.helpers.cli import REPO, run_main, tiny_train_args

HELPERS = Path(__file__).parent / "helpers"


def _train_subprocess(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{HELPERS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run([sys.executable, "-m", "medseg.train", *args], capture_output=True, text=True, cwd=REPO, env=env, timeout=300)


def _weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]


# Bit-for-bit comparable on a GPU too: deterministic kernels (cuDNN's autotuned and atomic-add backward ones are
# not), fp32, and a fixed batch (each run would plan its own on a GPU).
REPRODUCIBLE = ["--trainer.max_epochs=3", "--trainer.deterministic=true", "--trainer.precision=32-true", "--batch_planner.enabled=false"]


def test_killed_and_resumed_run_matches_uninterrupted_run(demo_root, tmp_path, caplog):
    args = tiny_train_args(demo_root, tmp_path / "straight") + REPRODUCIBLE
    straight = train.run(args)

    crashing = tiny_train_args(demo_root, tmp_path / "crashed") + REPRODUCIBLE
    killed = _train_subprocess(crashing + ["--trainer.callbacks+=crash.KillAtStep", "--trainer.callbacks.step=5"])
    assert killed.returncode == -signal.SIGKILL
    run_dir = tmp_path / "crashed" / "medseg" / "version_0"
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 3  # end of epoch 0

    with caplog.at_level(logging.INFO, logger="medseg"):
        train.run(crashing + ["--ckpt_path=last"])
    assert f"resuming from {run_dir / 'checkpoints' / 'last.ckpt'}" in caplog.text
    assert not (tmp_path / "crashed" / "medseg" / "version_1").exists()  # continued in the same run folder
    final = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert final["global_step"] == 9 and final["epoch"] == 2
    expected = _weights(straight.last_checkpoint)
    for name, value in final["state_dict"].items():
        torch.testing.assert_close(value, expected[name], rtol=1e-5, atol=1e-6, msg=name)


def test_resume_last_without_previous_run_starts_fresh(demo_root, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="medseg"):
        result = train.run(tiny_train_args(demo_root, tmp_path) + ["--trainer.max_epochs=1", "--ckpt_path=last"])
    assert "no last.ckpt under" in caplog.text and result.last_checkpoint.is_file()


def test_unwritable_output_folder_fails_before_training(demo_root, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code, out, err = run_main(train.main, tiny_train_args(demo_root, blocker / "runs"), capsys)
    assert code == 1
    last_line = err.strip().splitlines()[-1]
    assert last_line.startswith(f"medseg: error: {blocker / 'runs'}") and "output folder is not writable" in last_line
    assert "Epoch" not in out + err


def test_nearly_full_disk_fails_before_training(monkeypatch, tmp_path):
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(cli.shutil, "disk_usage", lambda path: usage(10 * 2**20, 9 * 2**20, 2**20))
    with pytest.raises(MedsegError, match=r"only 1 MiB free on disk, checkpoints need about \d+ MiB"):
        cli.check_output_dir(tmp_path, 100 * 2**20)


def test_persistent_nan_loss_stops_training_with_a_clear_message(demo_root, tmp_path, capsys):
    import shutil as sh

    import nibabel as nib
    import numpy as np

    root = sh.copytree(demo_root, tmp_path / "nan-data")
    for path in (root / "imagesTr").glob("*.nii.gz"):
        image = nib.load(path)
        values = image.get_fdata().astype(np.float32)
        values[:, :, ::3] = np.nan  # every patch crosses a NaN slice
        nib.save(nib.Nifti1Image(values, image.affine), path)
    args = tiny_train_args(root, tmp_path / "runs") + ["--data.check_dataset=false", "--model.max_nonfinite_steps=2"]
    code, _, err = run_main(train.main, args, capsys)
    assert code == 1
    last_line = err.strip().splitlines()[-1]
    assert re.match(r"medseg: error: training stopped: loss was NaN/Inf for 2 steps in a row \(global step \d+, cases phantom_\d+, phantom_\d+\)", last_line)


def test_disk_full_during_training_is_a_clear_error(demo_root, tmp_path):
    args = tiny_train_args(demo_root, tmp_path) + ["--trainer.callbacks+=tests.helpers.crash.DiskFullAtEpochEnd"]
    with pytest.raises(MedsegError, match=r"^disk full while writing .*; earlier checkpoints are intact"):
        train.run(args)
