"""Lightning callback that plans the batch size on the real model before the first training step."""

from __future__ import annotations

import inspect
import json
import logging
import math
from collections.abc import Iterable
from functools import partial
from pathlib import Path

import lightning
import torch
from torch import nn

from medseg.atomic import write_text_atomic
from medseg.errors import MedsegError
from medseg.memory.measure import OptimizerFactory, check_budget_fraction, training_setup
from medseg.memory.plan import BatchPlan, PlanCache, plan_on_device
from medseg.memory.simulate import SimulatedDevice

log = logging.getLogger(__name__)


def optimizer_like(optimizer: torch.optim.Optimizer) -> OptimizerFactory:
    """Return a factory for fresh optimizers of ``optimizer``'s class and settings (trial steps must not touch its state)."""
    accepted = inspect.signature(type(optimizer)).parameters
    settings = {k: v for k, v in optimizer.defaults.items() if k in accepted}

    def make(parameters: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
        return type(optimizer)(parameters, **settings)

    return make


def accumulation_for(batch_size: int, effective_batch_size: int, world_size: int) -> tuple[int, int]:
    """Return (batch size, accumulate_grad_batches) reaching at least ``effective_batch_size`` samples per optimizer step.

    The batch is then shrunk to the smallest that still reaches it, so the overshoot stays below one batch per rank.
    """
    accumulate = max(1, math.ceil(effective_batch_size / (batch_size * world_size)))
    return min(batch_size, math.ceil(effective_batch_size / (world_size * accumulate))), accumulate


class BatchSizePlanner(lightning.Callback):
    """Sets the data module's batch size to the largest verified one (and accumulation) before training starts.

    Args:
        budget_fraction: share of the GPU memory free at the start that a training step may use.
        effective_batch_size: samples per optimizer step across all ranks, made up by gradient accumulation
            when the memory-limited batch is smaller; None trains at the planned batch without accumulation.
        max_batch_size: never plan above this (an OOM recovery lowers it).
        cache_path: JSON file of plans keyed by model, patch, precision and GPU; None re-plans every run.
        size_sliding_window: also plan forward-only windows and record the size in the module's recipe.
        simulated_device: plan against this stand-in GPU instead of CUDA (tests, CPU demos).
        enabled: False keeps the configured batch size (a config that fixes it); accumulation still applies.

    Without CUDA and without a simulated device the configured batch size is kept as well.
    """

    def __init__(
        self,
        budget_fraction: float = 0.9,
        effective_batch_size: int | None = None,
        max_batch_size: int = 1024,
        cache_path: str | Path | None = None,
        size_sliding_window: bool = True,
        simulated_device: SimulatedDevice | None = None,
        enabled: bool = True,
    ) -> None:
        if effective_batch_size is not None and effective_batch_size < 1:
            raise MedsegError(f"effective_batch_size must be at least 1, got {effective_batch_size}")
        self.budget_fraction = check_budget_fraction(budget_fraction)
        self.effective_batch_size = effective_batch_size
        self.max_batch_size = max_batch_size
        self.cache = PlanCache(cache_path) if cache_path else None
        self.size_sliding_window = size_sliding_window
        self.simulated_device = simulated_device
        self.enabled = enabled
        self.plan: BatchPlan | None = None

    def on_fit_start(self, trainer: lightning.Trainer, pl_module: lightning.LightningModule) -> None:
        """Plan on this rank's device, take the minimum over ranks, and set batch size and accumulation."""
        datamodule = trainer.datamodule
        if datamodule is None:
            raise MedsegError("the batch planner needs trainer.fit(model, datamodule=...) to set the batch size")
        precision = str(trainer.precision)
        setup = training_setup(pl_module.recipe, pl_module.net, optimizer_like(trainer.optimizers[0]))
        batch_size = datamodule.batch_size
        if not self.enabled:
            log.info("batch planner: disabled, keeping the configured batch size %d", batch_size)
        elif self.simulated_device is None and pl_module.device.type != "cuda":
            log.info("batch planner: no CUDA device, keeping the configured batch size %d", batch_size)
        else:
            plan_here = partial(plan_on_device, setup, precision, self.budget_fraction, cache=self.cache, simulated_device=self.simulated_device)
            self.plan = plan_here(train=True, max_batch_size=self.max_batch_size)
            # a smaller size than a verified one fits too; the cap comes from an OOM recovery
            batch_size = max((b for b in self.plan.verified_batch_sizes if b <= self.max_batch_size), default=self.max_batch_size)
            batch_size = int(trainer.strategy.all_gather(torch.tensor(batch_size, device=pl_module.device)).min())
            if self.size_sliding_window:
                pl_module.recipe = pl_module.recipe.with_changes(window={"batch_size": plan_here(train=False).batch_size})
        accumulate = trainer.accumulate_grad_batches
        if self.effective_batch_size is not None:
            batch_size, accumulate = accumulation_for(batch_size, self.effective_batch_size, trainer.world_size)
        changed = accumulate != trainer.accumulate_grad_batches
        datamodule.batch_size, trainer.accumulate_grad_batches = batch_size, accumulate
        # configure_optimizers may already have built the train loader (estimated_stepping_batches):
        # rebuild it with the new size, and the schedulers with the new number of optimizer steps
        trainer.fit_loop._combined_loader = None
        if changed:
            trainer.strategy.setup_optimizers(trainer)
        log.info(
            "batch planner: %s training at batch size %d x %d accumulation x %d ranks = %d samples per optimizer step",
            precision, batch_size, accumulate, trainer.world_size, batch_size * accumulate * trainer.world_size,
        )
        if self.plan is not None and trainer.is_global_zero and trainer.log_dir:
            write_text_atomic(Path(trainer.log_dir) / "batch_plan.json", json.dumps(self.plan.to_dict(), indent=2))
