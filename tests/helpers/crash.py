"""Callbacks that crash a training process on purpose, for fault-tolerance tests (imported via PYTHONPATH)."""

import errno
import os
import signal

from lightning.pytorch.callbacks import Callback


class KillAtStep(Callback):
    """SIGKILL this process once training reaches `step`: no cleanup, no checkpoint, as a real crash."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class NaNImages(Callback):
    """Make every training batch's image NaN, so that every step's loss is NaN (clean files, as the dataset check wants)."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        batch["image"].fill_(float("nan"))


class DiskFullAtEpochEnd(Callback):
    """Raise the error a full disk gives when a checkpoint is written at the end of the first epoch."""

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(trainer.log_dir))


class DiskFullInSecondEpoch(Callback):
    """Fill the disk half way through the next file written from the second epoch on (a checkpoint: the logs are
    written otherwise), as a real full disk does (``tests.helpers.faults.interrupt_disk_writes``)."""

    def __init__(self) -> None:
        from pytest import MonkeyPatch

        self.faults = MonkeyPatch()

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        from tests.helpers.faults import disk_full, interrupt_disk_writes

        if trainer.current_epoch == 1:
            interrupt_disk_writes(self.faults, disk_full)

    def on_exception(self, trainer, pl_module, exception) -> None:
        self.faults.undo()  # teardown is not called after an exception

    def teardown(self, trainer, pl_module, stage) -> None:
        self.faults.undo()
