"""Callbacks that crash a training process on purpose, for fault-tolerance tests (imported via PYTHONPATH)."""

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
