"""A simulated GPU of fixed capacity, so the search, the back-off and OOM recovery run in CI on CPU.

A step whose modelled peak exceeds the capacity raises ``torch.OutOfMemoryError`` from inside the step,
exactly where a real GPU would, so the code that catches it and frees memory is the code under test.
With ``autotuning`` the first step at a new shape also models cuDNN v8's autotuning as PyTorch runs it
(``get_available_workspace`` and ``generate_and_filter_plans`` in ``aten/src/ATen/native/cudnn/Conv_v8.cpp``):
a trial workspace sized from the free memory the driver reports, halved until it fits under the cap.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import lightning
import torch

from medseg.planning.step import StepCost, TrainingSetup, preserved_weights, run_training_step, run_trial


@dataclass(frozen=True)
class Autotuning:
    """How the first step at a new shape autotunes on the simulated GPU.

    Attributes:
        driver_free_bytes: free memory the driver reports with nothing allocated: the whole GPU's, which is more
            than the capacity when the process is capped (``torch.cuda.set_per_process_memory_fraction``).
        min_workspace_bytes: the smallest workspace an engine can run with; halving below it finds no engine
            ("GET was unable to find an engine", an out-of-memory error).
    """

    driver_free_bytes: int
    min_workspace_bytes: int = 0


class SimulatedDevice:
    """A stand-in GPU with ``capacity_bytes`` on which a step at batch size b needs ``peak_bytes(b)`` at steady state.

    Args:
        capacity_bytes: memory of the simulated device (the per-process cap).
        peak_bytes: the step's steady-state peak at a batch size (a fitted estimator line, or any curve a test
            wants, e.g. one with a jump the linear fit cannot predict).
        name: device name recorded in plans and cache keys (default: from the capacity).
        autotuning: model cuDNN autotuning on the first step at each batch size (None: no autotuning). Like
            cuDNN's cache it lasts as long as this device (one process): a new device autotunes again.
    """

    def __init__(self, capacity_bytes: int, peak_bytes: Callable[[int], float], name: str | None = None, autotuning: Autotuning | None = None) -> None:
        self.capacity_bytes = capacity_bytes
        self.peak_bytes = peak_bytes
        self.name = name or f"simulated {capacity_bytes / 2**20:.0f} MiB"
        self.autotuning = autotuning
        self.tuned_batch_sizes: set[int] = set()

    def check(self, batch_size: int) -> int:
        """Return the peak of one step at ``batch_size``, raising ``torch.OutOfMemoryError`` where it does not fit.

        A step holds its steady-state peak; the first at a batch size (with ``autotuning``) also takes a trial
        workspace: the driver's free memory, halved until it fits under the capacity, and no engine (an
        out-of-memory error) where that leaves less than the smallest workspace.
        """
        need = int(self.peak_bytes(batch_size))
        if need > self.capacity_bytes:
            raise torch.OutOfMemoryError(
                f"CUDA out of memory (simulated): batch size {batch_size} needs {need / 2**20:.1f} MiB,"
                f" capacity {self.capacity_bytes / 2**20:.1f} MiB"
            )
        if self.autotuning is None or batch_size in self.tuned_batch_sizes:
            return need
        workspace = self.autotuning.driver_free_bytes - need
        while workspace > 0 and need + workspace > self.capacity_bytes:
            workspace //= 2
        if workspace < max(self.autotuning.min_workspace_bytes, 1):
            raise RuntimeError(
                f"GET was unable to find an engine to execute this computation (simulated: batch size {batch_size},"
                f" {(self.capacity_bytes - need) / 2**20:.1f} MiB free)"
            )
        self.tuned_batch_sizes.add(batch_size)
        return need + workspace

    def step_cost(self, precision: str, setup: TrainingSetup | None = None, train: bool = True) -> StepCost:
        """Return the step cost on this device: a warm-up step, then a steady-state step; with ``setup`` each step also runs the
        real step on CPU and fails inside it."""

        def trial(batch_size: int) -> tuple[int, float | None, int]:
            peaks: list[int] = []
            if setup is None:
                peaks += [self.check(batch_size), self.check(batch_size)]
            else:
                hook = setup.net.register_forward_hook(lambda *_: peaks.append(self.check(batch_size)))
                try:
                    with preserved_weights(setup.net):
                        run_training_step(setup, batch_size, precision, train, steps=2)
                finally:
                    hook.remove()
            # no time: CPU seconds say nothing about the simulated GPU's throughput
            return peaks[-1], None, peaks[0]

        return lambda batch_size: run_trial(lambda: trial(batch_size), batch_size, precision)


class SimulatedOOMCallback(lightning.Callback):
    """Raises the simulated device's OOM in training once ``global_step`` reaches ``from_step`` (fragmentation, larger cases)."""

    def __init__(self, device: SimulatedDevice, from_step: int = 0) -> None:
        self.device = device
        self.from_step = from_step

    def on_train_batch_start(self, trainer: lightning.Trainer, pl_module: lightning.LightningModule, batch: Any, batch_idx: int) -> None:
        """Check the batch against the simulated capacity before its step runs."""
        if trainer.global_step >= self.from_step:
            self.device.check(len(batch["image"]))
