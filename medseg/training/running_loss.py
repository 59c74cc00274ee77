"""The training loss as users watch it fall and as the logger records it: window means and the epoch's mean, summed
on the device, so that no training step stalls on a read-back or pays for Lightning's ``self.log``."""

from __future__ import annotations

import torch

from medseg.training.host_copies import HostCopies


class RunningLoss:
    """Mean training loss over windows of ``every`` steps, and over the epoch.

    Losses are summed on their device; at the end of each window the mean is copied to host memory without blocking
    (``HostCopies``). ``add`` hands back the newest mean that has arrived: at once on a CPU, a step or so
    later on a GPU. It is a CPU tensor, so Lightning's progress bar and loggers read it (``.item()``) without a
    device sync. ``epoch_mean`` is a device tensor, read once per epoch.
    """

    def __init__(self, every: int) -> None:
        if every < 1:
            raise ValueError(f"every must be at least 1, got {every}")
        self.every = every
        self._sum: torch.Tensor | None = None
        self._steps = 0
        self._epoch_sum: torch.Tensor | None = None
        self._epoch_steps = 0
        self._copies = HostCopies()

    def add(self, loss: torch.Tensor) -> torch.Tensor | None:
        """Add one step's loss; return the newest window mean that has reached host memory since the last call, else None."""
        loss = loss.detach().float()
        self._sum = loss if self._sum is None else self._sum + loss
        self._steps += 1
        self._epoch_sum = loss if self._epoch_sum is None else self._epoch_sum + loss
        self._epoch_steps += 1
        if self._steps == self.every:
            self._copy_to_host(self._sum / self._steps)
            self._sum, self._steps = None, 0
        newest = None
        for newest, _ in self._copies.arrived():
            pass
        return newest

    def epoch_mean(self) -> torch.Tensor | None:
        """Return the mean loss of the steps added since the last call (None: no step), on the losses' device."""
        if self._epoch_sum is None:
            return None
        mean = self._epoch_sum / self._epoch_steps
        self._epoch_sum, self._epoch_steps = None, 0
        return mean

    def _copy_to_host(self, mean: torch.Tensor) -> None:
        """Queue the window's mean for the host: the only read-back from the device, once per window."""
        self._copies.put(mean)
