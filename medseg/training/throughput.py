"""Training speed as users see it: patches/s, the share of time spent waiting for data, and peak GPU memory, per epoch."""

from __future__ import annotations

import time
from dataclasses import dataclass

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback


@dataclass(frozen=True)
class EpochThroughput:
    """One epoch's training speed, its first step left out (iterator start, first-call allocations).

    Attributes:
        patches_per_s: training patches per second of wall time.
        data_wait_share: share of that time between one step's end and the next step's start (fetching the batch).
        steps, seconds: the steps and wall time measured.
        peak_gpu_gib: peak GPU memory allocated by tensors in the epoch (None without a GPU).
    """

    patches_per_s: float
    data_wait_share: float
    steps: int
    seconds: float
    peak_gpu_gib: float | None


class ThroughputMonitor(Callback):
    """Logs ``train_patches_per_s``, ``train_data_wait`` (share of time) and, on a GPU, ``train_peak_gpu_gib`` each epoch.

    Timestamps are taken on the host at Lightning's batch hooks, so measuring adds no device synchronisation
    to the steps; the epoch's end waits for the GPU once so the last steps are counted in full.
    """

    def __init__(self) -> None:
        self.last: EpochThroughput | None = None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._first_end: float | None = None
        self._last_end: float | None = None
        self._wait = 0.0
        self._patches = 0
        self._steps = 0
        if pl_module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(pl_module.device)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        if self._last_end is not None:
            self._wait += time.perf_counter() - self._last_end

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int) -> None:
        now = time.perf_counter()
        if self._first_end is None:
            self._first_end = now
        else:
            self._patches += len(batch["image"])  # Lightning's extract_batch_size warns about a dict of tensors
            self._steps += 1
        self._last_end = now

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._steps:
            return
        peak = None
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
            self._last_end = time.perf_counter()
            peak = torch.cuda.max_memory_allocated(pl_module.device) / 2**30
        seconds = self._last_end - self._first_end
        self.last = EpochThroughput(self._patches / seconds, self._wait / seconds, self._steps, seconds, peak)
        pl_module.log("train_patches_per_s", self.last.patches_per_s, prog_bar=True)
        pl_module.log("train_data_wait", self.last.data_wait_share)
        if peak is not None:
            pl_module.log("train_peak_gpu_gib", peak)
