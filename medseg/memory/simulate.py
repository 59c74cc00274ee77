"""A simulated GPU of fixed capacity, so the search, the back-off and OOM recovery run in CI on CPU.

A step whose modelled peak exceeds the capacity raises ``torch.OutOfMemoryError`` from inside the step,
exactly where a real GPU would, so the code that catches it and frees memory is the code under test.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from medseg.memory.measure import Probe, TrainingSetup, preserved_weights, run_training_step, run_trial


class SimulatedDevice:
    """A stand-in GPU with ``capacity_bytes`` on which a step at batch size b needs ``peak_bytes(b)``.

    Args:
        capacity_bytes: memory of the simulated device.
        peak_bytes: the step's peak at a batch size (a fitted estimator line, or any curve a test wants,
            e.g. one with a jump the linear fit cannot predict).
        name: device name recorded in plans and cache keys (default: from the capacity).
    """

    def __init__(self, capacity_bytes: int, peak_bytes: Callable[[int], float], name: str | None = None) -> None:
        self.capacity_bytes = capacity_bytes
        self.peak_bytes = peak_bytes
        self.name = name or f"simulated {capacity_bytes / 2**20:.0f} MiB"

    def check(self, batch_size: int) -> None:
        """Raise ``torch.OutOfMemoryError`` if a step at ``batch_size`` does not fit."""
        need = self.peak_bytes(batch_size)
        if need > self.capacity_bytes:
            raise torch.OutOfMemoryError(
                f"CUDA out of memory (simulated): batch size {batch_size} needs {need / 2**20:.1f} MiB,"
                f" capacity {self.capacity_bytes / 2**20:.1f} MiB"
            )

    def probe(self, precision: str, setup: TrainingSetup | None = None, train: bool = True) -> Probe:
        """Return a planner probe; with ``setup`` each trial also runs the real step on CPU and fails inside it."""

        def step(batch_size: int) -> tuple[int, float | None]:
            if setup is None:
                self.check(batch_size)
            else:
                hook = setup.net.register_forward_hook(lambda *_: self.check(batch_size))
                try:
                    with preserved_weights(setup.net):
                        run_training_step(setup, batch_size, precision, train)
                finally:
                    hook.remove()
            # no time: CPU seconds say nothing about the simulated GPU's throughput
            return int(self.peak_bytes(batch_size)), None

        return lambda batch_size: run_trial(lambda: step(batch_size), batch_size, precision)
