"""NaN/Inf losses handled without waiting for the device: the update is skipped on the device, and training stops
after too many in a row, read back a step or two late instead of stalling every step."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch.nn.utils import get_total_norm

from medseg.training.host_copies import HostCopies


def nonfinite_gradients(parameters: Iterable[torch.Tensor]) -> torch.Tensor:
    """Return 1.0 (a float tensor on the gradients' device) if any gradient holds NaN/Inf, else 0.0.

    This is what fused AdamW reads as ``optimizer.found_inf`` to skip its update, as the fp16 gradient scaler
    has it do; DDP averages gradients before this runs, so every rank skips the same steps.
    """
    grads = [p.grad for p in parameters if p.grad is not None]
    return (~torch.isfinite(get_total_norm(grads))).float()


def agreed_on_all_ranks(flag: torch.Tensor) -> torch.Tensor:
    """Return ``flag`` (0/1) raised to its maximum over DDP ranks, so that every rank stops at the same step.

    A bare ``all_reduce`` is queued on the device; Lightning's ``strategy.reduce`` adds a barrier that waits on the host.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    return flag


class NonfiniteLossCounter:
    """Counts NaN/Inf losses in a row on the device and tells the host once ``limit`` is reached.

    Each step's count is copied to host memory without blocking (``HostCopies``); the host reads only copies that
    have arrived: at once on a CPU, a step or two later on a GPU.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_a_row: torch.Tensor | None = None
        self._copies = HostCopies()

    def count(self, loss: torch.Tensor, step: int, cases: Sequence[str]) -> str | None:
        """Count ``loss`` of global ``step`` on ``cases``; return the stop message once a read-back count reaches the limit."""
        nonfinite = agreed_on_all_ranks((~torch.isfinite(loss.detach())).to(torch.int32))
        previous = self.in_a_row if self.in_a_row is not None else torch.zeros_like(nonfinite)
        self.in_a_row = torch.where(nonfinite > 0, previous + 1, 0)
        self._copies.put(self.in_a_row, (step, list(cases)))
        return self._arrived_stop()

    def _arrived_stop(self) -> str | None:
        for host, (step, cases) in self._copies.arrived():
            in_a_row = int(host.numpy())  # host memory: reading it waits for nothing
            if in_a_row >= self.limit:
                return (
                    f"training stopped: loss was NaN/Inf for {in_a_row} steps in a row "
                    f"(global step {step}, cases {', '.join(cases) or '?'}); "
                    "the checkpoints written before are intact: lower the learning rate or check these cases"
                )
        return None
