"""The memory budget a training step may use: one share of what the process can use, on a real or simulated GPU."""

from __future__ import annotations

import torch

from medseg.errors import MedsegError
from medseg.planning.oom import release_memory


def check_budget_fraction(fraction: float) -> float:
    """Return ``fraction`` if it is a usable share of memory, else raise a one-line error."""
    if not 0 < fraction <= 1:
        raise MedsegError(f"memory budget fraction must be in (0, 1], got {fraction}")
    return fraction


def usable_cuda_bytes(device: torch.device) -> int:
    """Return the memory this process can use now: free memory plus torch's own cache, within the cap of
    ``torch.cuda.set_per_process_memory_fraction`` (a process sharing a GPU), whose excess raises OOM."""
    release_memory()
    free, total = torch.cuda.mem_get_info(device)
    usable = free + torch.cuda.memory_reserved(device)
    return int(min(usable, torch.cuda.get_per_process_memory_fraction(device) * total))


def budget_bytes(usable_bytes: int, fraction: float) -> int:
    """Return the bytes a step's steady state may use: ``fraction`` of ``usable_bytes`` (a simulated GPU's capacity,
    or ``usable_cuda_bytes``)."""
    return int(check_budget_fraction(fraction) * usable_bytes)
