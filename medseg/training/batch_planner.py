"""Lightning callback that plans the batch size on the real model before the first training step."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import lightning
import torch
from lightning.pytorch.plugins.layer_sync import TorchSyncBatchNorm
from torch import nn

from medseg.atomic import write_text_atomic
from medseg.errors import MedsegError
from medseg.option_values import DEFAULT_BUDGET_FRACTION
from medseg.planning.batch_search import BatchSearchResult
from medseg.planning.budget import check_budget_fraction
from medseg.planning.cache import PlanningCache
from medseg.planning.on_device import search_on_device, record_out_of_memory
from medseg.planning.step import training_setup

if TYPE_CHECKING:  # a stand-in GPU for tests and CPU demos, never imported by the library
    from medseg.testing import SimulatedDevice

log = logging.getLogger(__name__)


def accumulation_for(batch_size: int, effective_batch_size: int, world_size: int) -> tuple[int, int]:
    """Return (batch size, accumulate_grad_batches) reaching at least ``effective_batch_size`` samples per optimizer step.

    The batch is then shrunk to the smallest that still reaches it, so the overshoot stays below one batch per rank.
    """
    accumulate = max(1, math.ceil(effective_batch_size / (batch_size * world_size)))
    return min(batch_size, math.ceil(effective_batch_size / (world_size * accumulate))), accumulate


class BatchSearchCallback(lightning.Callback):
    """Sets the data module's batch size to the largest verified one (and accumulation) before training starts.

    Args:
        budget_fraction: share of the GPU memory free at the start that a training step may use.
        effective_batch_size: samples per optimizer step across all ranks, made up by gradient accumulation
            when the memory-limited batch is smaller; None trains at the planned batch without accumulation.
        max_batch_size: never plan above this (an OOM recovery lowers it).
        cache_path: JSON file of batch searches keyed by model, patch, precision, GPU and budget, relative to the trainer's
            ``default_root_dir``; None re-plans every run.
        size_sliding_window: also plan forward-only windows (``window_batch_size``: the recipe's, settled at fit start).
        simulated_device: plan against this stand-in GPU instead of CUDA (tests, CPU demos).
        enabled: False keeps the configured batch size (a config that fixes it); accumulation still applies.
        max_window_batch_size: never plan validation windows above this.

    Without CUDA and without a simulated device the configured batch size is kept as well.

    What it decides is plain values that the module's recipe is settled from at fit start: the data module's
    ``batch_size``, the trainer's ``accumulate_grad_batches`` and ``window_batch_size`` (None: not planned).
    """

    def __init__(
        self,
        budget_fraction: float = DEFAULT_BUDGET_FRACTION,
        effective_batch_size: int | None = None,
        max_batch_size: int = 1024,
        cache_path: str | Path | None = None,
        size_sliding_window: bool = True,
        simulated_device: SimulatedDevice | None = None,
        enabled: bool = True,
        max_window_batch_size: int = 1024,
    ) -> None:
        if effective_batch_size is not None and effective_batch_size < 1:
            raise MedsegError(f"effective_batch_size must be at least 1, got {effective_batch_size}")
        self.budget_fraction = check_budget_fraction(budget_fraction)
        self.effective_batch_size = effective_batch_size
        self.max_batch_size = max_batch_size
        self.cache_path = cache_path
        self.cache: PlanningCache | None = None
        self.size_sliding_window = size_sliding_window
        self.simulated_device = simulated_device
        self.enabled = enabled
        self.max_window_batch_size = max_window_batch_size
        self.search: BatchSearchResult | None = None
        self.window_search: BatchSearchResult | None = None
        self.window_batch_size: int | None = None

    def setup(self, trainer: lightning.Trainer, pl_module: lightning.LightningModule, stage: str) -> None:
        """Plan on this rank's device, take the minimum over ranks, and set batch size, accumulation and window batch.

        Runs in ``setup``, before ``configure_optimizers`` and before any data loader is built, so the loader and
        the learning-rate schedule are built once, for the batch that trains.
        """
        if stage != "fit":
            return
        datamodule = trainer.datamodule
        if datamodule is None:
            raise MedsegError("the batch planner needs trainer.fit(model, datamodule=...) to set the batch size")
        precision = str(trainer.precision)
        batch_size = datamodule.batch_size
        self.window_batch_size = None
        # next to the runs, not in whatever folder training was started from
        self.cache = PlanningCache(Path(trainer.default_root_dir) / self.cache_path) if self.cache_path else None
        if not self.enabled:
            log.info("batch planner: disabled, keeping the configured batch size %d", batch_size)
        elif self.simulated_device is None and trainer.strategy.root_device.type != "cuda":
            log.info("batch planner: no CUDA device, keeping the configured batch size %d", batch_size)
        else:
            pl_module.to(trainer.strategy.root_device)  # where the strategy puts it next; trials run there
            batch_size, window_batch_size = self._plan_on_every_rank(trainer, pl_module, precision)
            self.window_batch_size = window_batch_size or None
        accumulate = trainer.accumulate_grad_batches
        if self.effective_batch_size is not None:
            batch_size, accumulate = accumulation_for(batch_size, self.effective_batch_size, trainer.world_size)
        datamodule.batch_size, trainer.accumulate_grad_batches = batch_size, accumulate
        log.info(
            "batch planner: %s training at batch size %d x %d accumulation x %d %s = %d samples per optimizer step",
            precision, batch_size, accumulate, trainer.world_size, "rank" if trainer.world_size == 1 else "ranks",
            batch_size * accumulate * trainer.world_size,
        )
        # log_dir is a collective (a broadcast from rank 0): every rank reads it, or rank 0 waits forever
        log_dir = trainer.log_dir
        if self.search is not None and trainer.is_global_zero and log_dir:
            write_text_atomic(Path(log_dir) / "batch_plan.json", json.dumps(self.search.to_dict(), indent=2))

    def _plan_on_every_rank(self, trainer: lightning.Trainer, pl_module: lightning.LightningModule, precision: str) -> tuple[int, int]:
        """Return (training batch, window batch or 0): the smallest any rank planned.

        A rank whose planning fails still joins the gather (with size 0), and then every rank raises together:
        otherwise the others would wait in the gather forever.
        """
        error: Exception | None = None
        try:
            sizes = self._plan(trainer, pl_module, precision)
        except Exception as failure:  # noqa: BLE001 (re-raised below, once every rank knows)
            error, sizes = failure, (0, 0)
        gathered = trainer.strategy.all_gather(torch.tensor(sizes, device=trainer.strategy.root_device)).reshape(-1, 2)
        if error is not None:
            raise error
        if int(gathered[:, 0].min()) == 0:
            failed = [rank for rank, (size, _) in enumerate(gathered.tolist()) if size == 0]
            raise MedsegError(f"batch planning failed on rank {', '.join(map(str, failed))} (its log says why); no rank trains")
        return int(gathered[:, 0].min()), int(gathered[:, 1].min())

    def _plan(self, trainer: lightning.Trainer, pl_module: lightning.LightningModule, precision: str) -> tuple[int, int]:
        """Return (training batch, window batch or 0) planned on this rank's device."""
        setup = training_setup(pl_module.recipe, pl_module.net)
        search_here = partial(search_on_device, setup, precision, self.budget_fraction, cache=self.cache, simulated_device=self.simulated_device)
        # each rank runs its own number of trials: SyncBatchNorm's collectives in them would never match up
        with local_batch_norm(pl_module.net):
            self.search = search_here(train=True, max_batch_size=self.max_batch_size)
            if not self.size_sliding_window:
                return self.search.usable_batch_size(self.max_batch_size), 0
            # validation windows run beside what training holds by then and the trials do not: gradients and
            # AdamW's two moments (the volume stays on the CPU, where the windows are stitched)
            held = 3 * sum(p.numel() * p.element_size() for p in pl_module.net.parameters())
            self.window_search = search_here(train=False, max_batch_size=self.max_window_batch_size, reserved_bytes=held)
        return self.search.usable_batch_size(self.max_batch_size), self.window_search.usable_batch_size(self.max_window_batch_size)

    def record_out_of_memory(self, batch_size: int, validation: bool = False) -> Path | None:
        """Record in the planning cache that training (or validation windows) ran out of memory at ``batch_size``,
        so later runs search below it; return the cache file (None: no cache, nothing recorded)."""
        search = self.window_search if validation else self.search
        if search is None or self.cache is None or not search.cache_key:
            return None
        record_out_of_memory(self.cache, search, batch_size)
        return self.cache.path


def planner_of(trainer: lightning.Trainer) -> BatchSearchCallback | None:
    """Return the trainer's batch planner, or None where it has none."""
    return next((c for c in trainer.callbacks if isinstance(c, BatchSearchCallback)), None)


@contextmanager
def local_batch_norm(net: nn.Module) -> Iterator[None]:
    """Run ``net``'s SyncBatchNorm layers as plain batch norm (same weights and statistics) inside the block.

    The original layers are put back afterwards, so DDP and the optimizer keep the modules they know.
    """
    synced = [(parent, name, child) for parent in net.modules() for name, child in parent.named_children() if isinstance(child, nn.SyncBatchNorm)]
    for parent, name, child in synced:
        setattr(parent, name, TorchSyncBatchNorm().revert(child))
    try:
        yield
    finally:
        for parent, name, child in synced:
            setattr(parent, name, child)
