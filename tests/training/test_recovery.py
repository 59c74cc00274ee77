"""Out-of-memory in the middle of training: smaller batch, resume from the last checkpoint, no finished epoch lost."""

from __future__ import annotations

import argparse
import copy
from dataclasses import asdict
import pickle
import weakref
import logging

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from medseg.errors import MedsegError
from medseg.testing import SimulatedDevice, SimulatedOOMCallback
from medseg.recipe import Window
from medseg.training.recovery import fit_with_oom_recovery, newest_checkpoint, next_smaller
from medseg.training.batch_planner import BatchSearchCallback
from tests.helpers.stand_ins import MiB, RandomPatches, WithValidation, linear_curve


class EpochLog(L.Callback):
    """Records (epoch, batch size) of every training batch, across trainers."""

    def __init__(self, record: list[tuple[int, int]]) -> None:
        self.record = record

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.record.append((trainer.current_epoch, len(batch["image"])))


def every_epoch() -> ModelCheckpoint:
    """The checkpoint training keeps for resuming (medseg's last_checkpoint): last.ckpt, rewritten after every training epoch."""
    return ModelCheckpoint(filename="last", enable_version_counter=False, save_on_train_epoch_end=True)


def test_next_smaller_size_is_the_largest_verified_one_below_else_half() -> None:
    assert next_smaller(8, [8, 6, 3, 1]) == 6
    assert next_smaller(8, []) == 4
    with pytest.raises(MedsegError, match="batch size 1"):
        next_smaller(1, [1])


def test_oom_mid_training_resumes_from_the_last_checkpoint_with_a_smaller_batch(tiny_module, make_trainer, caplog) -> None:
    # from step 4 on (epoch 2 with 2 steps per epoch) a batch of 4 no longer fits: fragmentation, say
    device = SimulatedDevice(100 * MiB, linear_curve(10 * MiB, 25 * MiB))
    trained: list[tuple[int, int]] = []
    data = RandomPatches(batch_size=4, num_samples=8)

    def trainer() -> L.Trainer:
        return make_trainer(max_epochs=3, callbacks=[every_epoch(), SimulatedOOMCallback(device, from_step=4), EpochLog(trained)])

    with caplog.at_level(logging.WARNING, logger="medseg.training.recovery"):
        final = fit_with_oom_recovery(trainer, tiny_module, data, batch_sizes=[4, 3, 2, 1])
    assert data.batch_size == 3
    assert trained == [(0, 4), (0, 4), (1, 4), (1, 4), (2, 3), (2, 3), (2, 2)]  # epochs 0 and 1 not repeated
    assert final.current_epoch == 3 and final.global_step == 7
    assert "out of memory at batch size 4 (epoch 2, step 4): resuming from" in caplog.text
    assert "last.ckpt with batch size 3" in caplog.text


def test_recovery_can_refit_the_same_trainer(tiny_module, make_trainer) -> None:
    device = SimulatedDevice(100 * MiB, linear_curve(10 * MiB, 25 * MiB))
    trained: list[tuple[int, int]] = []
    data = RandomPatches(batch_size=4, num_samples=8)
    trainer = make_trainer(max_epochs=2, callbacks=[every_epoch(), SimulatedOOMCallback(device, from_step=2), EpochLog(trained)])
    assert fit_with_oom_recovery(lambda: trainer, tiny_module, data) is trainer
    assert trained == [(0, 4), (0, 4), (1, 2), (1, 2), (1, 2), (1, 2)]  # no verified sizes given: half


def test_recovery_caps_the_planner_of_the_new_trainer(tiny_module, make_trainer) -> None:
    planned = SimulatedDevice(100 * MiB, linear_curve(10 * MiB, 15 * MiB))  # plans 5
    fragmented = SimulatedDevice(100 * MiB, linear_curve(10 * MiB, 20 * MiB))  # 5 fails mid-training
    data = RandomPatches(batch_size=1, num_samples=10)
    planners: list[BatchSearchCallback] = []

    def trainer() -> L.Trainer:
        planners.append(BatchSearchCallback(size_sliding_window=False, simulated_device=planned))
        return make_trainer(max_epochs=2, callbacks=[planners[-1], every_epoch(), SimulatedOOMCallback(fragmented, from_step=2)])

    fit_with_oom_recovery(trainer, tiny_module, data)
    assert [p.max_batch_size for p in planners] == [1024, 4]
    assert data.batch_size == 4  # the largest size the planner verified below 5


class WindowsRunOutOfMemoryAbove(L.Callback):
    """Raises a CUDA-like OOM in validation while the module's window batch is above ``largest``."""

    def __init__(self, largest: int) -> None:
        self.largest = largest

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if pl_module.recipe.window.batch_size > self.largest:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated): validation windows")


def test_oom_in_validation_lowers_the_window_batch_not_the_training_batch(tiny_module, make_trainer) -> None:
    assert tiny_module.recipe.window.batch_size == 4  # as configured (Window's default)
    data = WithValidation(batch_size=4, num_samples=8)

    def trainer() -> L.Trainer:
        return make_trainer(limit_val_batches=1, num_sanity_val_steps=1, callbacks=[every_epoch(), WindowsRunOutOfMemoryAbove(1)])

    fit_with_oom_recovery(trainer, tiny_module, data)
    assert tiny_module.recipe.window.batch_size == 1
    assert data.batch_size == 4


def test_a_validation_oom_reaches_the_recipe_of_the_next_fit_and_its_checkpoint(tiny_module, make_trainer) -> None:
    # each new trainer's planner plans 5 windows again; the recipe stays below the size that ran out of memory
    def trainer() -> L.Trainer:
        planner = BatchSearchCallback(simulated_device=SimulatedDevice(100 * MiB, linear_curve(10 * MiB, 15 * MiB)))
        return make_trainer(limit_val_batches=1, num_sanity_val_steps=1, callbacks=[planner, every_epoch(), WindowsRunOutOfMemoryAbove(2)])

    final = fit_with_oom_recovery(trainer, tiny_module, WithValidation(batch_size=4, num_samples=8))
    saved = torch.load(newest_checkpoint(final), weights_only=True)
    assert saved["medseg"]["window"]["batch_size"] == 2  # what inference reads: half the 5 that failed
    assert saved["hyper_parameters"]["window"] == asdict(Window())  # left as configured


def test_oom_before_the_first_checkpoint_starts_again_from_the_initial_state(tiny_module, make_trainer) -> None:
    device = SimulatedDevice(100 * MiB, linear_curve(10 * MiB, 25 * MiB))  # from step 1 on, 4 no longer fits
    initial = copy.deepcopy(tiny_module)
    trainer = make_trainer(max_epochs=1, callbacks=[every_epoch(), SimulatedOOMCallback(device, from_step=1)])
    recovered = fit_with_oom_recovery(lambda: trainer, tiny_module, RandomPatches(batch_size=4, num_samples=8))

    straight = make_trainer(max_epochs=1, callbacks=[every_epoch()])
    straight.fit(initial, datamodule=RandomPatches(batch_size=2, num_samples=8))
    assert recovered.global_step == straight.global_step == 4
    for name, value in initial.state_dict().items():
        torch.testing.assert_close(tiny_module.state_dict()[name], value, rtol=0, atol=0, msg=name)


def test_oom_records_the_failed_batch_size_so_the_next_run_plans_below_it(tiny_module, make_trainer, tmp_path) -> None:
    planned = SimulatedDevice(100 * MiB, linear_curve(10 * MiB, 15 * MiB))  # plans 5
    fragmented = SimulatedDevice(100 * MiB, linear_curve(10 * MiB, 20 * MiB))  # 5 fails mid-training
    cache = tmp_path / "plans.json"

    def trainer() -> L.Trainer:
        planner = BatchSearchCallback(cache_path=cache, size_sliding_window=False, simulated_device=planned)
        return make_trainer(max_epochs=1, callbacks=[planner, every_epoch(), SimulatedOOMCallback(fragmented, from_step=1)])

    fit_with_oom_recovery(trainer, tiny_module, RandomPatches(batch_size=1, num_samples=10))
    relaunched = BatchSearchCallback(cache_path=cache, size_sliding_window=False, simulated_device=planned)
    data = RandomPatches(batch_size=1, num_samples=10)
    make_trainer(max_steps=1, callbacks=[relaunched]).fit(tiny_module, datamodule=data)
    assert data.batch_size == 4


class OutOfMemoryInBackward(L.Callback):
    """Runs out of memory in backward at step ``at_step``, with that step's graph built, once; keeps weak references
    to the step's activations, and counts at the next step, without a garbage collection, how many are alive."""

    def __init__(self, at_step: int) -> None:
        self.at_step, self.activations, self.alive_at_next_step = at_step, [], None
        self.hooks: list = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.activations and self.alive_at_next_step is None:
            self.alive_at_next_step = sum(reference() is not None for reference in self.activations)
        elif not self.activations and trainer.global_step == self.at_step:
            record = lambda _, __, out: self.activations.append(weakref.ref(out))  # noqa: E731
            self.hooks = [m.register_forward_hook(record) for m in pl_module.net.modules()]

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        if self.hooks:
            for hook in self.hooks:
                hook.remove()
            self.hooks = []
            raise torch.OutOfMemoryError("CUDA out of memory (simulated): backward")


def test_oom_in_backward_frees_the_failed_steps_activations_before_training_goes_on(tiny_module, make_trainer) -> None:
    # on a GPU, memory the failed step still holds when training resumes makes the smaller batch run out too
    failure = OutOfMemoryInBackward(at_step=3)
    trainer = make_trainer(max_epochs=3, callbacks=[every_epoch(), failure])
    fit_with_oom_recovery(lambda: trainer, tiny_module, RandomPatches(batch_size=4, num_samples=8), batch_sizes=[4, 2])
    assert failure.activations and failure.alive_at_next_step == 0


def test_recovery_loads_its_checkpoints_weights_only(tiny_module, make_trainer, tmp_path, monkeypatch) -> None:
    data = RandomPatches(batch_size=2, num_samples=4)
    first = make_trainer(max_epochs=1)
    first.fit(tiny_module, data)
    checkpoint = tmp_path / "unsafe.ckpt"
    torch.save({**torch.load(first.checkpoint_callback.best_model_path, weights_only=True), "extra": argparse.Namespace(x=1)}, checkpoint)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # torch's weights-only default no longer protects
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        fit_with_oom_recovery(lambda: make_trainer(max_epochs=2), tiny_module, data, ckpt_path=str(checkpoint))
