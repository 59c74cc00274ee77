"""The batch planner callback sets the data module's batch size and the trainer's accumulation before training."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.strategies import SingleDeviceStrategy

from medseg.errors import MedsegError
from medseg.recipe import Window
from medseg.testing import Autotuning, SimulatedDevice, SimulatedOOMCallback
from medseg.training.batch_planner import BatchSearchCallback, accumulation_for
from medseg.training.module import SegmentationModule
from tests.helpers.stand_ins import PATCH, TINY_UNET, MiB, RandomPatches, linear_curve


class BatchSizes(L.Callback):
    """Records the size of every training batch."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.sizes.append(len(batch["image"]))


@pytest.mark.parametrize(
    ("planned", "effective", "world", "expected"),
    [(6, 16, 1, (6, 3)), (8, 16, 1, (8, 2)), (32, 16, 1, (16, 1)), (6, 16, 2, (4, 2)), (5, None, 1, (5, 1))],
)
def test_accumulation_reaches_the_effective_batch_with_the_smallest_overshoot(planned, effective, world, expected) -> None:
    assert (accumulation_for(planned, effective, world) if effective else (planned, 1)) == expected


def test_planner_trains_at_the_verified_batch_size_with_accumulation(tiny_module, make_trainer) -> None:
    device = SimulatedDevice(100 * MiB, linear_curve(10 * MiB, 15 * MiB))  # budget 90 MiB: 5 samples
    planner, seen = BatchSearchCallback(effective_batch_size=12, simulated_device=device), BatchSizes()
    data = RandomPatches(batch_size=2, num_samples=18)
    trainer = make_trainer(callbacks=[planner, seen], max_steps=1)
    trainer.fit(tiny_module, datamodule=data)
    assert planner.search.batch_size == 5
    assert (data.batch_size, trainer.accumulate_grad_batches) == (4, 3)  # 4 x 3 = 12 samples per optimizer step
    assert seen.sizes == [4, 4, 4]
    assert tiny_module.recipe.window.batch_size == 5


def test_planner_reuses_the_cached_plan_after_one_verifying_step(tiny_module, make_trainer, tmp_path: Path) -> None:
    calls: list[int] = []
    curve = linear_curve(10 * MiB, 15 * MiB)
    device = SimulatedDevice(100 * MiB, lambda b: calls.append(b) or curve(b))
    for _ in range(2):
        calls.clear()
        planner = BatchSearchCallback(cache_path=tmp_path / "plans.json", size_sliding_window=False, simulated_device=device)
        make_trainer(callbacks=[planner], max_steps=1).fit(tiny_module, datamodule=RandomPatches(batch_size=2))
        assert planner.search.batch_size == 5
    assert calls == [5, 5]  # one step at the cached size, re-verifying it (the device reads its curve twice a step)


def test_a_cached_plan_that_no_longer_fits_is_planned_again(tiny_module, make_trainer, tmp_path: Path) -> None:
    # same device name and budget, but something else now holds part of the memory: the cached 5 fails its check
    roomy = SimulatedDevice(100 * MiB, linear_curve(10 * MiB, 15 * MiB), name="gpu")
    crowded = SimulatedDevice(100 * MiB, linear_curve(40 * MiB, 15 * MiB), name="gpu")
    sizes = []
    for device in (roomy, crowded):
        planner = BatchSearchCallback(cache_path=tmp_path / "plans.json", size_sliding_window=False, simulated_device=device)
        data = RandomPatches(batch_size=1)
        make_trainer(callbacks=[planner], max_steps=1).fit(tiny_module, datamodule=data)
        sizes.append(data.batch_size)
    assert sizes == [5, 3]


def test_a_plan_made_with_more_free_memory_is_not_reused_with_less(tiny_module, make_trainer, tmp_path: Path) -> None:
    # the simulated budget stands for the memory free at planning time: 9 GiB on an idle GPU, 4.5 GiB on a busy one
    sizes = []
    for capacity in (10 * 2**30, 5 * 2**30):
        device = SimulatedDevice(capacity, linear_curve(0, 2**30), name="gpu")
        planner = BatchSearchCallback(cache_path=tmp_path / "plans.json", size_sliding_window=False, simulated_device=device)
        data = RandomPatches(batch_size=1)
        make_trainer(callbacks=[planner], max_steps=1).fit(tiny_module, datamodule=data)
        sizes.append(data.batch_size)
    assert sizes == [9, 4]


def test_planner_without_a_gpu_keeps_the_configured_batch_size(tiny_module, make_trainer) -> None:
    data = RandomPatches(batch_size=3)
    trainer = make_trainer(callbacks=[BatchSearchCallback(effective_batch_size=6)], max_steps=1)
    trainer.fit(tiny_module, datamodule=data)
    assert (data.batch_size, trainer.accumulate_grad_batches) == (3, 2)


def test_disabled_planner_keeps_the_configured_batch_size_and_accumulation(tiny_module, make_trainer) -> None:
    device = SimulatedDevice(100 * MiB, linear_curve(10 * MiB, 15 * MiB))
    data = RandomPatches(batch_size=3)
    trainer = make_trainer(callbacks=[BatchSearchCallback(simulated_device=device, enabled=False)], max_steps=1, accumulate_grad_batches=2)
    trainer.fit(tiny_module, datamodule=data)
    assert (data.batch_size, trainer.accumulate_grad_batches) == (3, 2)


def test_every_rank_trains_at_the_smallest_batch_any_rank_planned(tiny_module, make_trainer, monkeypatch) -> None:
    # another rank whose GPU holds less planned 3: the gathered minimum wins
    monkeypatch.setattr(SingleDeviceStrategy, "all_gather", lambda self, tensor, **_: torch.stack([tensor, torch.tensor([3, 3])]))
    device = SimulatedDevice(100 * MiB, linear_curve(10 * MiB, 15 * MiB))
    data = RandomPatches(batch_size=1)
    make_trainer(callbacks=[BatchSearchCallback(simulated_device=device, size_sliding_window=False)], max_steps=1).fit(tiny_module, datamodule=data)
    assert data.batch_size == 3


def test_validation_windows_are_planned_beside_the_training_state(tiny_module, make_trainer) -> None:
    held = 3 * sum(p.numel() * p.element_size() for p in tiny_module.parameters())  # gradients and two AdamW moments
    planner = BatchSearchCallback(budget_fraction=1.0, simulated_device=SimulatedDevice(10 * held, linear_curve(0, held)))
    make_trainer(callbacks=[planner], max_steps=1).fit(tiny_module, datamodule=RandomPatches(batch_size=1))
    assert planner.search.batch_size == 10
    assert tiny_module.recipe.window.batch_size == 9


def test_trial_steps_run_sync_batch_norm_layers_without_their_collectives(make_trainer, monkeypatch) -> None:
    torch.manual_seed(0)
    module = SegmentationModule(network_kwargs={**TINY_UNET, "norm": "batch"}, in_channels=1, out_channels=2, patch_size=PATCH)
    module.net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(module.net)
    synced = [m for m in module.net.modules() if isinstance(m, torch.nn.SyncBatchNorm)]

    def collective(self, input):
        raise RuntimeError("SyncBatchNorm gathered statistics from the other ranks in a trial step")

    monkeypatch.setattr(torch.nn.SyncBatchNorm, "forward", collective)
    planner = BatchSearchCallback(simulated_device=SimulatedDevice(100 * MiB, linear_curve(10 * MiB, 15 * MiB)))
    make_trainer(callbacks=[planner], limit_train_batches=0).fit(module, datamodule=RandomPatches(batch_size=1))
    assert planner.search.batch_size == 5
    assert synced and [m for m in module.net.modules() if isinstance(m, torch.nn.SyncBatchNorm)] == synced  # training keeps them


def test_planning_that_fails_on_one_rank_fails_on_every_rank(tiny_module, make_trainer, monkeypatch) -> None:
    # this rank plans fine; another rank's GPU is too small for batch size 1 and reports 0
    monkeypatch.setattr(SingleDeviceStrategy, "all_gather", lambda self, tensor, **_: torch.stack([tensor, torch.tensor([0, 0])]))
    planner = BatchSearchCallback(simulated_device=SimulatedDevice(100 * MiB, linear_curve(10 * MiB, 15 * MiB)))
    with pytest.raises(MedsegError, match=r"batch planning failed on rank 1 \(its log says why\); no rank trains"):
        make_trainer(callbacks=[planner], max_steps=1).fit(tiny_module, datamodule=RandomPatches(batch_size=1))


def test_a_rank_whose_planning_fails_still_joins_the_gather(tiny_module, make_trainer, monkeypatch) -> None:
    gathered = []
    monkeypatch.setattr(SingleDeviceStrategy, "all_gather", lambda self, tensor, **_: gathered.append(tensor.tolist()) or tensor)
    planner = BatchSearchCallback(simulated_device=SimulatedDevice(10 * MiB, linear_curve(10 * MiB, 15 * MiB)))
    with pytest.raises(MedsegError, match="batch size 1 does not fit"):
        make_trainer(callbacks=[planner], max_steps=1).fit(tiny_module, datamodule=RandomPatches(batch_size=1))
    assert gathered == [[0, 0]]


def test_plan_cache_is_written_in_the_trainer_s_root_folder(tiny_module, make_trainer, tmp_path, monkeypatch) -> None:
    started_in = tmp_path / "elsewhere"
    started_in.mkdir()
    monkeypatch.chdir(started_in)
    planner = BatchSearchCallback(cache_path="plans.json", simulated_device=SimulatedDevice(100 * MiB, linear_curve(10 * MiB, 15 * MiB)))
    make_trainer(callbacks=[planner], max_steps=1, default_root_dir=tmp_path / "runs").fit(tiny_module, datamodule=RandomPatches(batch_size=1))
    assert (tmp_path / "runs" / "plans.json").is_file()
    assert list(started_in.iterdir()) == []


def test_training_from_a_cached_plan_autotunes_in_its_first_step_and_never_runs_out_of_memory(tiny_module, make_trainer, tmp_path) -> None:
    # the first run plans on the steady state, a later one re-verifies the cached plan; training's own first step
    # autotunes as in a process of its own
    def capped_gpu() -> SimulatedDevice:
        return SimulatedDevice(100 * MiB, linear_curve(10 * MiB, 15 * MiB), name="gpu", autotuning=Autotuning(driver_free_bytes=141 * 2**30))

    for _ in range(2):
        planner = BatchSearchCallback(cache_path=tmp_path / "plans.json", size_sliding_window=False, simulated_device=capped_gpu())
        data = RandomPatches(batch_size=1, num_samples=5 * 20)
        trainer = make_trainer(callbacks=[planner, SimulatedOOMCallback(capped_gpu())], max_steps=20)
        trainer.fit(tiny_module, datamodule=data)  # an out-of-memory error would end it here
        assert (data.batch_size, trainer.global_step) == (5, 20)  # 10 + 5 x 15 = 85 MiB of the 90 MiB budget


def test_the_checkpoint_records_the_planned_batch_and_window_batch_once(tiny_module, make_trainer, tmp_path) -> None:
    device = SimulatedDevice(100 * MiB, linear_curve(10 * MiB, 15 * MiB))  # 5 samples; windows 5 too
    planner = BatchSearchCallback(effective_batch_size=12, simulated_device=device)
    trainer = make_trainer(callbacks=[planner], max_steps=1)
    trainer.fit(tiny_module, datamodule=RandomPatches(batch_size=2, num_samples=12))
    trainer.save_checkpoint(tmp_path / "planned.ckpt")
    checkpoint = torch.load(tmp_path / "planned.ckpt", weights_only=True)
    recipe = checkpoint["medseg"]
    assert (recipe["batch_size"], recipe["accumulate_grad_batches"], recipe["window"]["batch_size"]) == (4, 3, 5)
    assert checkpoint["hyper_parameters"]["window"]["batch_size"] == Window.batch_size  # left as configured
