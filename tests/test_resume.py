"""Fault tolerance: a run killed mid-epoch and resumed with --ckpt_path last ends with the same weights."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import torch

from medseg import train
from tests.test_train import REPO, _tiny_args

HELPERS = Path(__file__).parent / "helpers"


def _train_subprocess(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{HELPERS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run([sys.executable, "-m", "medseg.train", *args], capture_output=True, text=True, cwd=REPO, env=env, timeout=300)


def _weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]


def test_killed_and_resumed_run_matches_uninterrupted_run(demo_root, tmp_path):
    args = _tiny_args(demo_root, tmp_path / "straight") + ["--trainer.max_epochs=3"]
    straight = train.run(args)

    crashing = _tiny_args(demo_root, tmp_path / "crashed") + ["--trainer.max_epochs=3"]
    killed = _train_subprocess(crashing + ["--trainer.callbacks+=crash.KillAtStep", "--trainer.callbacks.step=5"])
    assert killed.returncode == -signal.SIGKILL
    run_dir = tmp_path / "crashed" / "medseg" / "version_0"
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 3  # end of epoch 0

    resumed = _train_subprocess(crashing + ["--ckpt_path=last"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming from {run_dir / 'checkpoints' / 'last.ckpt'}" in resumed.stderr
    assert not (tmp_path / "crashed" / "medseg" / "version_1").exists()  # continued in the same run folder
    final = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert final["global_step"] == 9 and final["epoch"] == 2
    expected = _weights(straight.last_checkpoint)
    for name, value in final["state_dict"].items():
        torch.testing.assert_close(value, expected[name], rtol=1e-5, atol=1e-6, msg=name)


def test_resume_last_without_previous_run_starts_fresh(demo_root, tmp_path):
    result = _train_subprocess(_tiny_args(demo_root, tmp_path) + ["--trainer.max_epochs=1", "--ckpt_path=last"])
    assert result.returncode == 0, result.stderr[-2000:]
    assert "no last.ckpt under" in result.stderr
