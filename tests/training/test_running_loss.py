"""The running training loss: the mean of each window of steps, read back from the device once per window, for the
progress bar and the logger; the epoch's mean for the logger."""

from __future__ import annotations

import csv
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from medseg.training.running_loss import RunningLoss
from tests.helpers.stand_ins import RandomPatches


class StepRecorder(L.Callback):
    """Records each step's loss and what the progress bar holds after it."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.shown: list[float | None] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))
        self.shown.append(trainer.progress_bar_metrics.get("loss"))


def test_each_window_s_mean_comes_back_once_at_its_end():
    running = RunningLoss(every=3)
    returned = [running.add(torch.tensor(value)) for value in [1.0, 2.0, 6.0, 4.0, 4.0, 7.0, 1.0]]
    assert [None if r is None else float(r) for r in returned] == [None, None, 3.0, None, None, 5.0, None]
    assert returned[2].device.type == "cpu"


def test_progress_bar_shows_the_mean_loss_of_the_last_log_every_n_steps(tiny_module, make_trainer, monkeypatch):
    read_backs = []
    copy_to_host = RunningLoss._copy_to_host

    def counted(self, mean):
        read_backs.append(tiny_module.global_step)
        copy_to_host(self, mean)

    monkeypatch.setattr(RunningLoss, "_copy_to_host", counted)
    recorder = StepRecorder()
    trainer = make_trainer(max_steps=6, log_every_n_steps=3, callbacks=[recorder], precision="32-true")
    trainer.fit(tiny_module, datamodule=RandomPatches(batch_size=2, num_samples=12))
    assert read_backs == [2, 5]  # the 3rd and 6th steps only
    first, second = sum(recorder.losses[:3]) / 3, sum(recorder.losses[3:]) / 3
    assert recorder.shown[:2] == [None, None]
    assert recorder.shown[2:5] == [pytest.approx(first, rel=1e-6)] * 3  # held until the next window ends
    assert trainer.progress_bar_metrics["loss"] == pytest.approx(second, rel=1e-6)
    assert "loss" not in trainer.logged_metrics  # the logger gets train_loss_step, as before


def test_logger_records_each_window_s_mean_and_the_epoch_s_mean(tiny_module, make_trainer, tmp_path):
    recorder = StepRecorder()
    logger = CSVLogger(tmp_path, name="run")
    trainer = make_trainer(max_steps=6, log_every_n_steps=3, callbacks=[recorder], precision="32-true", logger=logger)
    trainer.fit(tiny_module, datamodule=RandomPatches(batch_size=2, num_samples=12))
    rows = list(csv.DictReader(open(Path(logger.log_dir) / "metrics.csv")))
    steps = {int(row["step"]): float(row["train_loss_step"]) for row in rows if row.get("train_loss_step")}
    losses = recorder.losses
    assert steps == {2: pytest.approx(sum(losses[:3]) / 3, rel=1e-6), 5: pytest.approx(sum(losses[3:]) / 3, rel=1e-6)}
    (epoch,) = [float(row["train_loss_epoch"]) for row in rows if row.get("train_loss_epoch")]
    assert epoch == pytest.approx(sum(losses) / 6, rel=1e-6)
