"""The FP32 vs mixed-precision comparison, a view of the batch planner: one batch search per precision for one recipe,
measured on this machine's GPU or estimated on fake tensors for a GPU of a given capacity."""

from __future__ import annotations

from medseg.model.networks import network_for
from medseg.planning.batch_search import BatchSearchResult, search_batch_size
from medseg.planning.budget import budget_bytes
from medseg.planning.cache import PlanningCache
from medseg.planning.fake_tensor import fake_step, fake_tensor_step_cost
from medseg.planning.on_device import search_on_device
from medseg.planning.step import cudnn_autotuning, training_setup
from medseg.recipe import Recipe

# a comparison shows how far each precision goes, beyond the 1024 cap that training's searches use
COMPARISON_MAX_BATCH_SIZE = 2**16


def estimated_batch_searches(recipe: Recipe, precisions: list[str], capacity_bytes: int, budget_fraction: float) -> list[BatchSearchResult]:
    """Return per-precision batch searches from fake-tensor steps for a GPU of ``capacity_bytes``."""
    results = []
    for precision in precisions:
        result = search_batch_size(fake_tensor_step_cost(recipe, precision), precision, budget_bytes(capacity_bytes, budget_fraction),
                               max_batch_size=COMPARISON_MAX_BATCH_SIZE)
        result.device_name, result.backend = f"simulated GPU {capacity_bytes / 2**30:g} GiB", "fake-tensor estimate"
        results.append(result)
    return results


def measured_batch_searches(recipe: Recipe, precisions: list[str], budget_fraction: float, cache: PlanningCache) -> list[BatchSearchResult]:
    """Return per-precision batch searches measured with real trials on the current CUDA GPU, cuDNN autotuning on as in training,
    each with the fake-tensor estimate at its batch beside it."""
    setup = training_setup(recipe, network_for(recipe).cuda())
    results = []
    for precision in precisions:
        with cudnn_autotuning(True):
            result = search_on_device(setup, precision, budget_fraction, max_batch_size=COMPARISON_MAX_BATCH_SIZE, cache=cache)
        result.estimated_peak_bytes = fake_step(recipe, result.batch_size, precision).peak_bytes  # the estimator against the measured steady state
        results.append(result)
    return results
