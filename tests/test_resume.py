"""Fault tolerance: a run killed mid-epoch and resumed with --ckpt_path last ends with the same weights."""

import argparse
import csv
import logging
import os
import re
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from medseg.errors import MedsegError
from medseg.training import cli
from medseg.training import command as train
from tests.helpers.cli import REPO, run_main, run_module, tiny_train_args

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
    straight = cli.run(args)

    crashing = tiny_train_args(demo_root, tmp_path / "crashed") + REPRODUCIBLE
    killed = _train_subprocess(crashing + ["--trainer.callbacks+=crash.KillAtStep", "--trainer.callbacks.step=5"])
    assert killed.returncode == -signal.SIGKILL
    run_dir = tmp_path / "crashed" / "medseg" / "version_0"
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 3  # end of epoch 0

    with caplog.at_level(logging.INFO, logger="medseg"):
        cli.run(crashing + ["--ckpt_path=last"])
    assert f"resuming from {run_dir / 'checkpoints' / 'last.ckpt'}" in caplog.text
    assert not (tmp_path / "crashed" / "medseg" / "version_1").exists()  # continued in the same run folder
    final = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert final["global_step"] == 9 and final["epoch"] == 2
    expected = _weights(straight.last_checkpoint)
    for name, value in final["state_dict"].items():
        torch.testing.assert_close(value, expected[name], rtol=1e-5, atol=1e-6, msg=name)


def test_resume_last_without_previous_run_starts_fresh(demo_root, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="medseg"):
        result = cli.run(tiny_train_args(demo_root, tmp_path) + ["--trainer.max_epochs=1", "--ckpt_path=last"])
    assert "no last.ckpt under" in caplog.text and result.last_checkpoint.is_file()


def test_unwritable_output_folder_fails_before_training(demo_root, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code, out, err = run_main(train.main, tiny_train_args(demo_root, blocker / "runs"), capsys)
    assert code == 1
    last_line = err.strip().splitlines()[-1]
    assert last_line == f"medseg: error: {blocker / 'runs' / 'medseg' / 'version_0'}: output folder is not writable (Not a directory)"
    assert "Epoch" not in out + err


def test_nearly_full_disk_fails_before_training(monkeypatch, tmp_path):
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(cli.shutil, "disk_usage", lambda path: usage(10 * 2**20, 9 * 2**20, 2**20))
    with pytest.raises(MedsegError, match=r"only 1 MiB free on disk, checkpoints need about \d+ MiB"):
        cli.check_output_dir(tmp_path, 100 * 2**20)


def test_persistent_nan_loss_stops_training_with_a_clear_message(demo_root, tmp_path, capsys):
    args = tiny_train_args(demo_root, tmp_path / "runs") + ["--model.max_nonfinite_steps=2", "--trainer.callbacks+=tests.helpers.crash.NaNImages"]
    code, _, err = run_main(train.main, args, capsys)
    assert code == 1
    last_line = err.strip().splitlines()[-1]
    assert re.match(r"medseg: error: training stopped: loss was NaN/Inf for 2 steps in a row \(global step \d+, cases phantom_\d+, phantom_\d+\)", last_line)


def test_a_scan_with_nan_voxels_is_refused_by_name_even_without_the_dataset_check(demo_root, tmp_path):
    import shutil as sh

    import nibabel as nib
    import numpy as np

    root = sh.copytree(demo_root, tmp_path / "nan-data")
    path = sorted((root / "imagesTr").glob("*.nii.gz"))[0]
    image = nib.load(path)
    values = image.get_fdata().astype(np.float32)
    values[:, :, ::3] = np.nan
    nib.save(nib.Nifti1Image(values, image.affine), path)
    # a process of its own: a preprocessing thread left running when the error ends it would abort it (exit code 134)
    done = run_module("medseg.train", *tiny_train_args(root, tmp_path / "runs"), "--data.check_dataset=false")
    err = done.stderr
    assert done.returncode == 1, err[-2000:]
    assert re.match(rf"medseg: error: {re.escape(str(path))}: [\d,]+ voxel\(s\) are NaN or infinite", err.strip().splitlines()[-1])


def test_disk_full_during_training_is_a_clear_error(demo_root, tmp_path):
    args = tiny_train_args(demo_root, tmp_path) + ["--trainer.callbacks+=tests.helpers.crash.DiskFullAtEpochEnd"]
    with pytest.raises(MedsegError, match=r"^disk full while writing .*; earlier checkpoints are intact"):
        cli.run(args)


def _rows(metrics: Path) -> list[dict[str, str]]:
    with metrics.open(newline="") as file:
        return list(csv.DictReader(file))


def _best_state(checkpoint: Path) -> dict:
    """Return the state the best-checkpoint callback (the one monitoring val_mean_dice) saved in ``checkpoint``."""
    callbacks = torch.load(checkpoint, map_location="cpu", weights_only=True)["callbacks"]
    return next(state for key, state in callbacks.items() if "val_mean_dice" in key)


def test_resume_appends_to_the_runs_metrics_and_keeps_its_config(demo_root, tmp_path):
    args = tiny_train_args(demo_root, tmp_path)
    first = cli.run(args)
    config = (first.log_dir / "config.yaml").read_text()
    before = _rows(first.log_dir / "metrics.csv")

    resumed = cli.run(args + ["--trainer.max_epochs=3", "--ckpt_path=last"])
    assert resumed.log_dir == first.log_dir
    after = _rows(first.log_dir / "metrics.csv")
    assert after[: len(before)] == before and len(after) > len(before)
    assert {row["epoch"] for row in after if row.get("val_mean_dice")} >= {"0", "1", "2"}  # epochs 0 and 1, then 2 after the resume
    assert (first.log_dir / "config.yaml").read_text() == config
    assert "max_epochs: 3" in (first.log_dir / "config-resume-1.yaml").read_text()


def test_resume_from_an_explicit_checkpoint_continues_its_run_and_its_best_score(demo_root, tmp_path):
    args = tiny_train_args(demo_root, tmp_path)
    first = cli.run(args)
    best_before = _best_state(first.last_checkpoint)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resumed = cli.run(args + ["--trainer.max_epochs=3", f"--ckpt_path={first.last_checkpoint}"])
    assert not [w for w in caught if "won't be reloaded" in str(w.message)]  # Lightning's warning where it forgets the best score
    assert resumed.log_dir == first.log_dir and not (tmp_path / "medseg" / "version_1").exists()
    validated = [row for row in _rows(first.log_dir / "metrics.csv") if row.get("val_mean_dice")]
    assert {row["epoch"] for row in validated} >= {"0", "1", "2"}  # epochs 0 and 1 before the resume, 2 after it
    scores = [float(row["val_mean_dice"]) for row in validated]
    best_after = _best_state(resumed.last_checkpoint)
    assert float(best_after["best_model_score"]) == pytest.approx(max(scores), abs=1e-6)
    assert float(best_after["best_model_score"]) >= float(best_before["best_model_score"])
    assert resumed.best_checkpoint == Path(best_after["best_model_path"]) and resumed.best_checkpoint.is_file()


def test_resume_from_a_url_is_refused_before_anything_is_downloaded(demo_root, tmp_path, capsys):
    args = tiny_train_args(demo_root, tmp_path) + ["--ckpt_path=https://example.org/last.ckpt"]
    code, out, err = run_main(train.main, args, capsys)
    assert code == 1
    assert err.strip().splitlines()[-1].startswith("medseg: error: --ckpt_path https://example.org/last.ckpt is a URL")
    assert "download it and pass the file" in err and "Traceback" not in err and "Epoch" not in out + err


@pytest.mark.parametrize("how", ["--ckpt_path=last", "explicit"])
def test_an_empty_last_checkpoint_is_one_line_before_training(demo_root, tmp_path, capsys, how):
    # what a kill -9 during a copy into last.ckpt left (issue 32)
    checkpoint = tmp_path / "medseg" / "version_0" / "checkpoints" / "last.ckpt"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"")
    option = how if how != "explicit" else f"--ckpt_path={checkpoint}"
    code, out, err = run_main(train.main, tiny_train_args(demo_root, tmp_path) + [option], capsys)
    assert code == 1
    assert err.strip().splitlines()[-1] == f"medseg: error: checkpoint {checkpoint} is not a readable PyTorch checkpoint: EOFError after 0 bytes"
    assert "Traceback" not in err and "Epoch" not in out + err


def test_a_checkpoint_that_needs_unsafe_loading_is_refused_on_resume(demo_root, tmp_path, capsys, monkeypatch):
    checkpoint = tmp_path / "old.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": argparse.Namespace(lr=1.0)}, checkpoint)  # what old Lightning saved
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # torch's default no longer protects
    code, out, err = run_main(train.main, tiny_train_args(demo_root, tmp_path / "runs") + [f"--ckpt_path={checkpoint}"], capsys)
    assert code == 1
    assert err.strip().splitlines()[-1].startswith(f"medseg: error: checkpoint {checkpoint} needs unsafe (arbitrary code) loading and is refused")
    assert "Epoch" not in out + err
