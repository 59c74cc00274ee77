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


class DiskFullAtEpochEnd(Callback):
    """Raise the error a full disk gives when a checkpoint is written at the end of the first epoch."""

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(trainer.log_dir))
