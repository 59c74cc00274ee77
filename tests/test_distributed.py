"""Real 2-process DDP fits on CPU (gloo): one plans on every rank, finishes, writes one set of checkpoints, and logs the
Dice that one process computes on the whole validation set at the precision the run recorded; planning that fails on
one rank, and an out-of-memory error on one rank, end every rank within a bounded time."""

import csv
import json
import os
import subprocess
import sys

import lightning as L
import pytest
import torch

from medseg.training.datamodule import SegmentationDataModule
from medseg.training.module import SegmentationModule
from tests.helpers.cli import REPO, tiny_train_args


def _last_logged(metrics_csv, key: str) -> float:
    with open(metrics_csv) as handle:
        values = [row[key] for row in csv.DictReader(handle) if row.get(key)]
    return float(values[-1])


SIMULATED_GPUS = "--trainer.callbacks+=tests.helpers.simulated_gpu.SimulatedGpus"
needs_distributed = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch without distributed support")


def _ddp_train(demo_root, out, *extra: str) -> subprocess.CompletedProcess:
    """Run a short 2-rank fit (2 epochs, validated at the end) and return the finished launcher process."""
    args = tiny_train_args(demo_root, out) + [
        "--trainer.strategy=ddp", "--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.precision=32-true",
        "--data.num_folds=2", "--data.iterations_per_epoch=2", "--trainer.check_val_every_n_epoch=2", "--trainer.num_sanity_val_steps=0",
        *extra,
    ]
    return subprocess.run([sys.executable, "-m", "medseg.train", *args], capture_output=True, text=True, cwd=REPO, env=_with_repo_on_path(), timeout=300)


def _with_repo_on_path() -> dict[str, str]:
    """The environment, with the repository importable by the launched ranks (for the test callbacks)."""
    return {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


@needs_distributed
def test_two_process_ddp_fit_plans_on_every_rank_and_matches_single_process_validation(demo_root, tmp_path, cpu_bf16):
    # the default 16-mixed, resolved on this CPU as 32-true and as bf16-mixed (cpu_bf16): both precisions, both resolutions;
    # each rank plans its batch on a simulated GPU of its own (100 and 70 MiB)
    out = tmp_path / "ddp"
    args = tiny_train_args(demo_root, out) + [
        "--trainer.strategy=ddp", "--trainer.accelerator=cpu", "--trainer.devices=2", "--data.num_folds=2",
        SIMULATED_GPUS, "--trainer.callbacks.capacity_mib=[100, 70]",
    ]
    result = subprocess.run([sys.executable, "-m", "medseg.train", *args], capture_output=True, text=True, cwd=REPO, env=_with_repo_on_path(), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("Validation Dice of the best checkpoint") == 1  # only rank 0 reports
    # 100 MiB plans 5 (90 MiB budget), 70 MiB plans 3: both ranks train at 3
    assert "training at batch size 3 x 1 accumulation x 2 ranks" in result.stderr
    runs = list((out / "medseg").iterdir())
    assert len(runs) == 1
    assert json.loads((runs[0] / "batch_plan.json").read_text())["batch_size"] == 5  # rank 0's own plan
    assert (out / "batch_plans.json").is_file()  # the cache sits in the run root, not in the folder training started from
    checkpoints = sorted(p.name for p in (runs[0] / "checkpoints").iterdir())
    assert checkpoints[0].startswith("best-") and checkpoints[1:] == ["last.ckpt"]
    logged = _last_logged(runs[0] / "metrics.csv", "val_mean_dice")  # trainer.validate() of the best checkpoint

    best = torch.load(runs[0] / "checkpoints" / checkpoints[0], map_location="cpu", weights_only=True)
    recorded = best["medseg"]["precision"]
    assert recorded == ("bf16-mixed" if cpu_bf16 else "32-true") and f"running {recorded}" in result.stderr
    model = SegmentationModule(**best["hyper_parameters"])
    model.load_state_dict(best["state_dict"])
    data = SegmentationDataModule(str(demo_root), patch_size=(32, 32, 16), num_folds=2, num_workers=0)
    trainer = L.Trainer(accelerator="cpu", devices=1, precision=recorded, logger=False, enable_progress_bar=False, enable_model_summary=False)
    [single] = trainer.validate(model, datamodule=data, verbose=False)
    assert len(data.val_cases) == 3  # odd: the two ranks validate 2 and 1 cases
    assert logged == pytest.approx(single["val_mean_dice"], abs=1e-6)


@needs_distributed
def test_planning_that_fails_on_one_rank_ends_both_ranks_with_one_error(demo_root, tmp_path):
    result = _ddp_train(demo_root, tmp_path, SIMULATED_GPUS, "--trainer.callbacks.capacity_mib=[100, 20]")
    assert result.returncode == 1, result.stderr[-3000:]
    assert "batch size 1 does not fit in the memory budget of 18 MiB" in result.stderr  # rank 1's own reason
    assert "medseg: error: batch planning failed on rank 1 (its log says why); no rank trains" in result.stderr


@needs_distributed
def test_oom_on_one_rank_ends_both_and_the_relaunch_resumes_at_the_recorded_smaller_batch(demo_root, tmp_path):
    # both ranks plan 5 (one step an epoch); from step 1 (epoch 1) on, rank 1's GPU holds only 80 MiB: 5 samples (85 MiB) no longer fit
    oom = [SIMULATED_GPUS, "--trainer.callbacks.capacity_mib=[100, 100]", "--trainer.callbacks.training_capacity_mib=[100, 80]", "--trainer.callbacks.from_step=1"]
    failed = _ddp_train(demo_root, tmp_path, *oom)
    assert failed.returncode != 0
    message = (
        "medseg: error: out of memory at batch size 5 on rank 1 (epoch 1, step 1) ends every rank: the smaller size 4 is recorded in"
        f" {tmp_path / 'batch_plans.json'}; relaunch with --ckpt_path last to resume from last.ckpt"
    )
    assert failed.stderr.count(message) == 1, failed.stderr[-3000:]

    resumed = _ddp_train(demo_root, tmp_path, *oom, "--ckpt_path=last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stderr and "training at batch size 4 x 1 accumulation x 2 ranks" in resumed.stderr
    final = torch.load(tmp_path / "medseg" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)
    assert (final["epoch"], final["global_step"]) == (1, 2)
