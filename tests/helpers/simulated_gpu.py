"""A simulated GPU per DDP rank, for CPU tests of planning and out-of-memory errors under DDP (passed with
``--trainer.callbacks+=tests.helpers.simulated_gpu.SimulatedGpus``)."""

from __future__ import annotations

from lightning.pytorch.callbacks import Callback

from medseg.testing import SimulatedDevice
from medseg.training.batch_planner import BatchSearchCallback

MiB = 2**20


class SimulatedGpus(Callback):
    """Gives each rank's batch planner a simulated GPU whose steps need 10 MiB + 15 MiB per sample, and can make one
    rank's GPU run out of memory in training from a step on (fragmentation, a larger case).

    Args:
        capacity_mib: memory of each rank's GPU for planning, by rank.
        training_capacity_mib: memory of each rank's GPU in training from ``from_step`` on, by rank; None: as planned.
        from_step: global step from which ``training_capacity_mib`` holds.
    """

    def __init__(self, capacity_mib: list[float], training_capacity_mib: list[float] | None = None, from_step: int = 0) -> None:
        self.capacity_mib = capacity_mib
        self.training_capacity_mib = training_capacity_mib
        self.from_step = from_step

    @staticmethod
    def _device(capacity_mib: float) -> SimulatedDevice:
        return SimulatedDevice(int(capacity_mib * MiB), lambda batch_size: (10 + 15 * batch_size) * MiB, name="simulated GPU")

    def setup(self, trainer, pl_module, stage) -> None:
        for planner in (c for c in trainer.callbacks if isinstance(c, BatchSearchCallback)):
            planner.simulated_device = self._device(self.capacity_mib[trainer.global_rank])

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.training_capacity_mib is not None and trainer.global_step >= self.from_step:
            self._device(self.training_capacity_mib[trainer.global_rank]).check(len(batch["image"]))
