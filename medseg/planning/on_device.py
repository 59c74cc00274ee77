"""The batch search of a model on one device, real or simulated: its budget, the cache, and the search."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch

from medseg.errors import MedsegError
from medseg.option_values import DEFAULT_BUDGET_FRACTION
from medseg.planning.batch_search import BatchSearchResult, fits_budget, search_batch_size
from medseg.planning.budget import budget_bytes, usable_cuda_bytes
from medseg.planning.cache import PlanningCache, cache_key
from medseg.planning.cuda_steps import cuda_step_cost
from medseg.planning.step import StepCost, TrainingSetup, device_of, preserved_weights

if TYPE_CHECKING:  # a stand-in GPU for tests and CPU demos, never imported by the library
    from medseg.testing import SimulatedDevice

log = logging.getLogger(__name__)


def device_step_cost(setup: TrainingSetup, precision: str, train: bool, simulated_device: SimulatedDevice | None) -> tuple[StepCost, int, str, str]:
    """Return (step cost, usable bytes, device name, backend) for the device the model is on, or the simulated one."""
    if simulated_device is not None:
        return simulated_device.step_cost(precision, setup, train), simulated_device.capacity_bytes, simulated_device.name, "simulated"
    device = device_of(setup.net)
    if device.type != "cuda":
        raise MedsegError(f"planning the batch size needs a CUDA GPU, the model is on {device}")
    return cuda_step_cost(setup, precision, train), usable_cuda_bytes(device), torch.cuda.get_device_name(device), "cuda"


def batch_search_key(setup: TrainingSetup, precision: str, device_name: str, budget: int, train: bool, max_batch_size: int) -> str:
    """Return the cache key of a batch search. The budget (a share of the memory free at planning time) counts in whole
    GiB, so a search made on an idle GPU is not reused on a busy one, while the few MiB free memory varies between runs
    still find it."""
    return cache_key({
        "config": setup.config, "patch_size": list(setup.patch_size), "precision": precision, "device": device_name,
        "budget_gib": budget // 2**30, "train": train, "max_batch_size": max_batch_size,
    })


def record_out_of_memory(cache: PlanningCache, result: BatchSearchResult, batch_size: int) -> None:
    """Store that training at ``batch_size`` ran out of memory, so that the next run of this search stays below it."""
    result.failed_batch_size = min(batch_size, result.failed_batch_size or batch_size)
    cache.put(result.cache_key, result.to_dict())


def search_on_device(
    setup: TrainingSetup,
    precision: str,
    budget_fraction: float = DEFAULT_BUDGET_FRACTION,
    train: bool = True,
    max_batch_size: int = 1024,
    cache: PlanningCache | None = None,
    simulated_device: SimulatedDevice | None = None,
    reserved_bytes: int = 0,
) -> BatchSearchResult:
    """Return the cached batch search for this model, patch, precision, GPU and budget once one trial re-verifies it, or
    search again now (weights restored) and cache the result.

    ``train=False`` searches with forward-only steps under no_grad: the sliding-window batch size for inference.
    ``reserved_bytes`` is left out of the budget for what the steps do not hold themselves but share the GPU
    with (validation windows run beside the training state).
    """
    step_cost, usable, device_name, backend = device_step_cost(setup, precision, train, simulated_device)
    budget = budget_bytes(usable, budget_fraction) - reserved_bytes
    key = batch_search_key(setup, precision, device_name, budget, train, max_batch_size)
    record = cache.get(key) if cache else None
    failed = None
    if record is not None:
        cached = BatchSearchResult.from_dict(record)
        size = cached.usable_batch_size(max_batch_size)
        with preserved_weights(setup.net):
            check = step_cost(size)
        if fits_budget(check, budget):
            log.info("batch planner: using the cached %s batch size from %s (batch size %d re-verified)", precision, cache.path, size)
            return cached
        log.info("batch planner: the cached %s batch size %d no longer fits: searching again", precision, size)
        failed = cached.failed_batch_size
    with preserved_weights(setup.net):
        result = search_batch_size(step_cost, precision, budget, max_batch_size=max_batch_size)
    result.device_name, result.backend, result.train, result.failed_batch_size = device_name, backend, train, failed
    if cache:
        result.cache_key = key
        cache.put(key, result.to_dict())
    return result
