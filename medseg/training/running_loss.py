"""The training loss as users watch it fall: a running mean for the progress bar, summed on the device and copied to
the host every few steps without waiting for it, so that no training step stalls on a read-back."""

from __future__ import annotations

from collections import deque

import torch


class RunningLoss:
    """Mean training loss over windows of ``every`` steps.

    Losses are summed on their device; at the end of each window the mean is copied to host memory without blocking
    (pinned memory, a CUDA event). ``add`` hands back the newest mean that has arrived: at once on a CPU, a step or so
    later on a GPU. It is a CPU tensor, so Lightning's progress bar reads it (``.item()``) without a device sync.
    """

    def __init__(self, every: int) -> None:
        if every < 1:
            raise ValueError(f"every must be at least 1, got {every}")
        self.every = every
        self._sum: torch.Tensor | None = None
        self._steps = 0
        self._copies: deque[tuple[torch.Tensor, torch.cuda.Event | None]] = deque()

    def add(self, loss: torch.Tensor) -> torch.Tensor | None:
        """Add one step's loss; return the newest window mean that has reached host memory since the last call, else None."""
        loss = loss.detach().float()
        self._sum = loss if self._sum is None else self._sum + loss
        self._steps += 1
        if self._steps == self.every:
            self._copy_to_host(self._sum / self._steps)
            self._sum, self._steps = None, 0
        newest = None
        while self._copies and (self._copies[0][1] is None or self._copies[0][1].query()):
            newest = self._copies.popleft()[0]
        return newest

    def _copy_to_host(self, mean: torch.Tensor) -> None:
        """Queue the window's mean for the host: the only read-back from the device, once per window."""
        on_gpu = mean.device.type == "cuda"
        host = torch.empty((), dtype=torch.float32, pin_memory=on_gpu)
        host.copy_(mean, non_blocking=on_gpu)
        event = torch.cuda.Event() if on_gpu else None
        if event is not None:
            event.record()
        self._copies.append((host, event))
