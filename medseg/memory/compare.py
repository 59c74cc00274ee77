"""Per-precision batch plans for the FP32 vs mixed-precision comparison: measured on a GPU or estimated on a CPU."""

from __future__ import annotations

from medseg.memory.estimate import estimate_memory
from medseg.memory.measure import training_setup
from medseg.memory.plan import BatchPlan, PlanCache, plan_batch_size, plan_on_device
from medseg.memory.simulate import SimulatedDevice
from medseg.model.networks import network_for
from medseg.recipe import Recipe

# a comparison shows how far each precision goes, beyond the 1024 cap that training plans use
COMPARISON_MAX_BATCH_SIZE = 2**16


def estimated_plans(recipe: Recipe, precisions: list[str], capacity_bytes: int, budget_fraction: float) -> list[BatchPlan]:
    """Return per-precision plans from the CPU estimator against a simulated GPU of ``capacity_bytes``."""
    setup = training_setup(recipe)
    plans = []
    for precision in precisions:
        fit, _ = estimate_memory(setup, precision)
        device = SimulatedDevice(capacity_bytes, fit.peak_bytes, name=f"simulated GPU {capacity_bytes / 2**30:g} GiB")
        plan = plan_batch_size(device.probe(precision), precision, int(budget_fraction * capacity_bytes), max_batch_size=COMPARISON_MAX_BATCH_SIZE)
        plan.device_name, plan.backend = device.name, "cpu-estimator+simulated"
        plans.append(plan)
    return plans


def measured_plans(recipe: Recipe, precisions: list[str], budget_fraction: float, cache: PlanCache) -> list[BatchPlan]:
    """Return per-precision plans measured with real trial steps on the current CUDA GPU."""
    setup = training_setup(recipe, network_for(recipe).cuda())
    return [plan_on_device(setup, precision, budget_fraction, max_batch_size=COMPARISON_MAX_BATCH_SIZE, cache=cache) for precision in precisions]
