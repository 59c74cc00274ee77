"""Values read back from the device without a sync: copied to host memory without blocking, handed on once arrived."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Any

import torch


class HostCopies:
    """A queue of one-value device tensors on their way to host memory (pinned memory and a CUDA event on a GPU).

    ``arrived`` yields the copies that have landed, oldest first: at once on a CPU, a step or two later on a GPU.
    Reading a yielded tensor (``.item()``, ``.numpy()``) waits for nothing.
    """

    def __init__(self) -> None:
        self._pending: deque[tuple[torch.Tensor, torch.cuda.Event | None, Any]] = deque()

    def put(self, value: torch.Tensor, tag: Any = None) -> None:
        """Start copying the one-value tensor ``value`` to the host; ``tag`` comes back with it."""
        on_gpu = value.device.type == "cuda"
        host = torch.empty((), dtype=value.dtype, pin_memory=on_gpu)
        host.copy_(value, non_blocking=on_gpu)
        event = torch.cuda.Event() if on_gpu else None
        if event is not None:
            event.record()
        self._pending.append((host, event, tag))

    def arrived(self) -> Iterator[tuple[torch.Tensor, Any]]:
        """Yield (host tensor, tag) for each copy that has landed, oldest first; a copy still on its way stops it."""
        while self._pending and (self._pending[0][1] is None or self._pending[0][1].query()):
            host, _, tag = self._pending.popleft()
            yield host, tag
