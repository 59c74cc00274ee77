"""Keep training through an out-of-memory error: smaller batch, then resume from the last checkpoint."""

from __future__ import annotations

import logging
import signal
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

import lightning
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.states import RunningStage

from medseg.errors import MedsegError
from medseg.planning.oom import is_out_of_memory, release_memory, smaller_size
from medseg.training.batch_planner import planner_of

log = logging.getLogger(__name__)

VALIDATION_STAGES = (RunningStage.VALIDATING, RunningStage.SANITY_CHECKING)


class RecoveryPoints(lightning.Callback):
    """What a recovery needs from inside ``fit``: a checkpoint of the state training starts from, and the stage
    (training, validation, sanity check) an exception ended, which Lightning forgets in its teardown.

    Args:
        folder: where to save ``start.ckpt`` before the first step; None saves none (a run resumed from a checkpoint
            has one). Not under DDP, where an OOM ends the run instead.
    """

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder
        self.start_checkpoint: str | None = None
        self.stage: RunningStage | None = None

    def on_train_start(self, trainer: lightning.Trainer, pl_module: lightning.LightningModule) -> None:
        if self.folder is not None and self.start_checkpoint is None and trainer.world_size == 1:
            self.start_checkpoint = str(self.folder / "start.ckpt")
            trainer.save_checkpoint(self.start_checkpoint, weights_only=False)  # the whole state: a recovery resumes from it

    def on_exception(self, trainer: lightning.Trainer, pl_module: lightning.LightningModule, exception: BaseException) -> None:
        self.stage = trainer.state.stage


def newest_checkpoint(trainer: lightning.Trainer) -> str | None:
    """Return the most recently written checkpoint of the trainer's callbacks that save the newest state, or None.

    Those are a callback's ``last.ckpt`` (``save_last``) and the file of one without a monitor (medseg's
    ``last_checkpoint``, named ``last``): its "best" is always the newest state.
    """
    callbacks = [c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint)]
    paths = [Path(p) for c in callbacks for p in (c.last_model_path, "" if c.monitor else c.best_model_path) if p]
    existing = [p for p in paths if p.exists()]
    return str(max(existing, key=lambda p: p.stat().st_mtime)) if existing else None


def next_smaller(batch_size: int, verified: Sequence[int], what: str = "batch size") -> int:
    """Return the size to resume with after an out-of-memory error at ``batch_size`` (``smaller_size``'s rule)."""
    smaller = smaller_size(batch_size, verified)
    if smaller is None:
        raise MedsegError(f"out of memory at {what} 1: use a smaller patch size or model")
    return smaller


def fit_with_oom_recovery(
    make_trainer: Callable[[], lightning.Trainer],
    model: lightning.LightningModule,
    datamodule: lightning.LightningDataModule,
    ckpt_path: str | None = None,
    batch_sizes: Sequence[int] | None = None,
) -> lightning.Trainer:
    """Return the trainer that finished ``fit``, after as many out-of-memory recoveries as it took.

    On an OOM in training the memory is freed, ``datamodule.batch_size`` drops to the next smaller verified
    size (``batch_sizes``, else the planner's verified sizes, else half), and the trainer from ``make_trainer``
    resumes from the newest last-checkpoint (or ``ckpt_path``). Before the first last-checkpoint, and without
    ``ckpt_path``, it starts again from a checkpoint saved before the first step: the weights, optimizer and
    epoch and step counters training started with. An OOM in validation (or its sanity check) halves the
    window batch instead: the model's ``max_window_batch_size``, which the recipe of the next fit (and so its
    checkpoints) is settled below. A ``BatchSearchCallback`` in that trainer is capped at the smaller batch, and
    records the failed size in its plan cache. So that no finished epoch is lost, the trainer needs a checkpoint
    of the newest state saved after every training epoch (``newest_checkpoint``), as medseg's ``last_checkpoint``
    is: ``ModelCheckpoint(filename="last", enable_version_counter=False, save_on_train_epoch_end=True)``. One
    tied to validation writes only every ``check_val_every_n_epoch`` epochs.

    Under DDP the other ranks wait in a collective for the failing one, so no rank can refit: the smaller size
    is recorded, every rank is ended, and one error says how to relaunch (``--ckpt_path last``).

    Args:
        make_trainer: gives the trainer for each attempt: a fresh one with the same settings, or the same
            trainer again (``lambda: trainer``: Lightning refits it from the checkpoint).
        model, datamodule: as for ``trainer.fit``.
        ckpt_path: checkpoint to start from, as for ``trainer.fit``.
        batch_sizes: verified batch sizes to fall back on.
    """
    with tempfile.TemporaryDirectory(prefix="medseg-start-") as folder:
        points = RecoveryPoints(None if ckpt_path else Path(folder))
        return _fit_until_done(make_trainer, model, datamodule, ckpt_path, batch_sizes, points)


def _fit_until_done(
    make_trainer: Callable[[], lightning.Trainer],
    model: lightning.LightningModule,
    datamodule: lightning.LightningDataModule,
    ckpt_path: str | None,
    batch_sizes: Sequence[int] | None,
    points: RecoveryPoints,
) -> lightning.Trainer:
    cap: int | None = None
    while True:
        trainer = make_trainer()
        planner = planner_of(trainer)
        if points not in trainer.callbacks:
            trainer.callbacks.append(points)
        if planner is not None and cap is not None:
            planner.max_batch_size = min(planner.max_batch_size, cap)
        try:
            # weights-only: a checkpoint holds plain data (tensors, numbers, strings); anything else is refused
            trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
            return trainer
        except RuntimeError as error:
            if not is_out_of_memory(error):
                raise
        # outside the except block the error's traceback no longer pins the failed step's tensors
        epoch, step = trainer.current_epoch, trainer.global_step
        in_validation = points.stage in VALIDATION_STAGES
        what = "validation window batch size" if in_validation else "batch size"
        if in_validation:
            failed = model.recipe.window.batch_size
            smaller = next_smaller(failed, [], what)
        else:
            failed = datamodule.batch_size
            if batch_sizes is None:
                batch_sizes = planner.search.verified_batch_sizes if planner is not None and planner.search is not None else []
            smaller = next_smaller(failed, batch_sizes)
        recorded = planner.record_out_of_memory(failed, in_validation) if planner is not None else None
        if trainer.world_size > 1:
            end_every_rank(trainer, f"out of memory at {what} {failed} on rank {trainer.global_rank} (epoch {epoch}, step {step})", smaller, recorded)
        if in_validation:
            model.max_window_batch_size = smaller
        else:
            cap = datamodule.batch_size = smaller
        ckpt_path = newest_checkpoint(trainer) or ckpt_path or points.start_checkpoint
        del trainer
        release_memory()
        log.warning(
            "out of memory at %s %d (epoch %d, step %d): %s with %s %d", what, failed, epoch, step,
            "starting again from the start" if ckpt_path == points.start_checkpoint else f"resuming from {ckpt_path}", what, smaller,
        )


def end_every_rank(trainer: lightning.Trainer, what_happened: str, smaller: int, recorded: Path | None) -> NoReturn:
    """End a DDP run after an out-of-memory error on this rank, with one error that says how to relaunch.

    The other ranks wait for this one in a collective (gradient all-reduce, a barrier) and cannot be told to
    refit. Processes Lightning launched itself are killed here; under torchrun, and under SLURM with
    ``srun --kill-on-bad-exit=1``, this rank's exit ends the others.
    """
    if trainer.strategy.launcher is not None:
        trainer.strategy.launcher.kill(signal.SIGKILL)  # no-op where the ranks were launched by torchrun or srun
    size = f"{smaller} is recorded in {recorded}" if recorded else f"{smaller} has to be set by hand (no plan cache)"
    raise MedsegError(f"{what_happened} ends every rank: the smaller size {size}; relaunch with --ckpt_path last to resume from last.ckpt")
