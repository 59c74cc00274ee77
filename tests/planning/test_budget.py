"""The one memory budget: a share of what the process may use, within its per-process cap."""

from __future__ import annotations

import pytest
import torch

from medseg.errors import MedsegError
from medseg.planning.budget import budget_bytes, usable_cuda_bytes


@pytest.mark.parametrize(("process_fraction", "expected_gib"), [(1.0, 0.9 * 60), (0.25, 0.9 * 20)])
def test_budget_is_the_free_memory_within_the_process_memory_cap(monkeypatch, process_fraction, expected_gib) -> None:
    # an 80 GiB GPU with 50 GiB free and 10 GiB in torch's cache; a cap of 0.25 allows this process 20 GiB in all
    GiB = 2**30
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (50 * GiB, 80 * GiB))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 10 * GiB)
    monkeypatch.setattr(torch.cuda, "get_per_process_memory_fraction", lambda device=None: process_fraction)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # release_memory: nothing to empty here
    assert budget_bytes(usable_cuda_bytes(torch.device("cuda")), 0.9) == int(expected_gib * GiB)


@pytest.mark.parametrize("fraction", [0, 1.5, -0.1])
def test_a_budget_fraction_outside_zero_to_one_is_a_one_line_error(fraction) -> None:
    with pytest.raises(MedsegError, match=rf"memory budget fraction must be in \(0, 1\], got {fraction}"):
        budget_bytes(2**30, fraction)
