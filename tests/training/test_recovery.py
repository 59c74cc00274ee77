"""Out-of-memory in the middle of training: smaller batch, resume from the last checkpoint, no finished epoch lost."""

from __future__ import annotations

import logging

import lightning as L
import pytest
from lightning.pytorch.callbacks import ModelCheckpoint

from medseg.errors import MedsegError
from medseg.training.recovery import SimulatedOOMCallback, fit_with_oom_recovery, next_smaller
from medseg.memory.simulate import SimulatedDevice
from medseg.training.batch_planner import BatchSizePlanner
from tests.memory.fakes import MiB, RandomPatches, linear_curve


class EpochLog(L.Callback):
    """Records (epoch, batch size) of every training batch, across trainers."""

    def __init__(self, record: list[tuple[int, int]]) -> None:
        self.record = record

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.record.append((trainer.current_epoch, len(batch["image"])))


def every_epoch() -> ModelCheckpoint:
    """The checkpoint training keeps for resuming: latest epoch and last.ckpt after every training epoch."""
    return ModelCheckpoint(save_last=True, save_on_train_epoch_end=True)


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
    planners: list[BatchSizePlanner] = []

    def trainer() -> L.Trainer:
        planners.append(BatchSizePlanner(size_sliding_window=False, simulated_device=planned))
        return make_trainer(max_epochs=2, callbacks=[planners[-1], every_epoch(), SimulatedOOMCallback(fragmented, from_step=2)])

    fit_with_oom_recovery(trainer, tiny_module, data)
    assert [p.max_batch_size for p in planners] == [1024, 4]
    assert data.batch_size == 4  # the largest size the planner verified below 5
