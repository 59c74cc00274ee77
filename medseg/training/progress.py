"""The training progress bar, redrawn on a clock instead of at every step."""

from __future__ import annotations

import math
import time

from lightning.pytorch.callbacks import TQDMProgressBar


class ProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar, redrawn at most every ``interval_s`` seconds and at the end of each bar.

    Lightning's own redraws at every step, formatting every metric again: 0.5 ms of host time a step on a 2-core
    CPU (benchmarks/results/loop_overhead/loop_overhead_cpu.md), time a fast GPU step needs for launching its kernels. Twice a
    second is as often as anyone reads it; a step slower than that is still drawn at every step.
    """

    def __init__(self, interval_s: float = 0.5, process_position: int = 0, leave: bool = False) -> None:
        super().__init__(refresh_rate=1, process_position=process_position, leave=leave)
        self.interval_s = interval_s
        self._last_redraw = -math.inf

    def _should_update(self, current: int, total: int) -> bool:
        if not super()._should_update(current, total):
            return False
        now = time.monotonic()
        if current == total or now - self._last_redraw >= self.interval_s:
            self._last_redraw = now
            return True
        return False
