"""Keep training through an out-of-memory error: smaller batch, then resume from the last checkpoint."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning
from lightning.pytorch.callbacks import ModelCheckpoint

from medseg.errors import MedsegError
from medseg.memory.oom import is_out_of_memory, release_memory
from medseg.memory.simulate import SimulatedDevice
from medseg.training.batch_planner import BatchSizePlanner

log = logging.getLogger(__name__)


def newest_checkpoint(trainer: lightning.Trainer) -> str | None:
    """Return the most recently written last-checkpoint of the trainer's checkpoint callbacks, or None."""
    paths = [Path(c.last_model_path) for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint) and c.last_model_path]
    existing = [p for p in paths if p.exists()]
    return str(max(existing, key=lambda p: p.stat().st_mtime)) if existing else None


def next_smaller(batch_size: int, verified: Sequence[int]) -> int:
    """Return the largest verified size below ``batch_size``, else half of it (memory only shrinks with the batch)."""
    if batch_size <= 1:
        raise MedsegError("out of memory at batch size 1: use a smaller patch size or model")
    return max((b for b in verified if b < batch_size), default=batch_size // 2)


def fit_with_oom_recovery(
    make_trainer: Callable[[], lightning.Trainer],
    model: lightning.LightningModule,
    datamodule: lightning.LightningDataModule,
    ckpt_path: str | None = None,
    batch_sizes: Sequence[int] | None = None,
) -> lightning.Trainer:
    """Return the trainer that finished ``fit``, after as many out-of-memory recoveries as it took.

    On an OOM in the middle of training the memory is freed, ``datamodule.batch_size`` drops to the next
    smaller verified size (``batch_sizes``, else the planner's verified sizes, else half), and the trainer
    from ``make_trainer`` resumes from the newest last-checkpoint (or ``ckpt_path`` if none was written
    yet). A ``BatchSizePlanner`` in that trainer is capped at the smaller size. So that no finished epoch
    is lost, the trainer needs a ``ModelCheckpoint(save_last=True, save_on_train_epoch_end=True)``: one tied
    to validation writes ``last.ckpt`` only every ``check_val_every_n_epoch`` epochs.

    Args:
        make_trainer: gives the trainer for each attempt: a fresh one with the same settings, or the same
            trainer again (``lambda: trainer``: Lightning refits it from the checkpoint).
        model, datamodule: as for ``trainer.fit``.
        ckpt_path: checkpoint to start from, as for ``trainer.fit``.
        batch_sizes: verified batch sizes to fall back on.
    """
    cap: int | None = None
    while True:
        trainer = make_trainer()
        planner = next((c for c in trainer.callbacks if isinstance(c, BatchSizePlanner)), None)
        if planner is not None and cap is not None:
            planner.max_batch_size = min(planner.max_batch_size, cap)
        try:
            trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
            return trainer
        except RuntimeError as error:
            if not is_out_of_memory(error):
                raise
        # outside the except block the error's traceback no longer pins the failed step's tensors
        failed = datamodule.batch_size
        verified = batch_sizes
        if verified is None:
            verified = planner.plan.verified_batch_sizes if planner is not None and planner.plan is not None else []
        cap = datamodule.batch_size = next_smaller(failed, verified)
        ckpt_path = newest_checkpoint(trainer) or ckpt_path
        epoch, step = trainer.current_epoch, trainer.global_step
        del trainer
        release_memory()
        log.warning(
            "out of memory at batch size %d (epoch %d, step %d): resuming from %s with batch size %d",
            failed, epoch, step, ckpt_path or "the start", cap,
        )


class SimulatedOOMCallback(lightning.Callback):
    """Raises the simulated device's OOM in training once ``global_step`` reaches ``from_step`` (fragmentation, larger cases)."""

    def __init__(self, device: SimulatedDevice, from_step: int = 0) -> None:
        self.device = device
        self.from_step = from_step

    def on_train_batch_start(self, trainer: lightning.Trainer, pl_module: lightning.LightningModule, batch: Any, batch_idx: int) -> None:
        """Check the batch against the simulated capacity before its step runs."""
        if trainer.global_step >= self.from_step:
            self.device.check(len(batch["image"]))
