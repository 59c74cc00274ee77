"""The FP32 vs mixed-precision comparison, a view of the batch planner: one plan per precision for one recipe,
measured on this machine's GPU or estimated on fake tensors for a GPU of a given capacity."""

from __future__ import annotations

from medseg.model.networks import network_for
from medseg.planning.batch_search import BatchPlan, plan_batch_size
from medseg.planning.budget import budget_bytes
from medseg.planning.cache import PlanCache
from medseg.planning.fake_tensor import fake_step, fake_tensor_step_cost
from medseg.planning.on_device import plan_on_device
from medseg.planning.step import cudnn_autotuning, training_setup
from medseg.recipe import Recipe

# a comparison shows how far each precision goes, beyond the 1024 cap that training plans use
COMPARISON_MAX_BATCH_SIZE = 2**16


def estimated_plans(recipe: Recipe, precisions: list[str], capacity_bytes: int, budget_fraction: float) -> list[BatchPlan]:
    """Return per-precision plans from fake-tensor steps for a GPU of ``capacity_bytes``."""
    plans = []
    for precision in precisions:
        plan = plan_batch_size(fake_tensor_step_cost(recipe, precision), precision, budget_bytes(capacity_bytes, budget_fraction),
                               max_batch_size=COMPARISON_MAX_BATCH_SIZE)
        plan.device_name, plan.backend = f"simulated GPU {capacity_bytes / 2**30:g} GiB", "fake-tensor estimate"
        plans.append(plan)
    return plans


def measured_plans(recipe: Recipe, precisions: list[str], budget_fraction: float, cache: PlanCache) -> list[BatchPlan]:
    """Return per-precision plans measured with real trials on the current CUDA GPU, cuDNN autotuning on as in training,
    each with the fake-tensor estimate at its batch beside it."""
    setup = training_setup(recipe, network_for(recipe).cuda())
    plans = []
    for precision in precisions:
        with cudnn_autotuning(True):
            plan = plan_on_device(setup, precision, budget_fraction, max_batch_size=COMPARISON_MAX_BATCH_SIZE, cache=cache)
        plan.estimated_peak_bytes = fake_step(recipe, plan.batch_size, precision).peak_bytes  # the estimator against the measured steady state
        plans.append(plan)
    return plans
