"""Dataset plans on disk: the record in the plan cache, keyed by fingerprint and GPU, and the training config with a
comment on every value, so a later start on the same dataset and GPU reuses the plan without reading voxels."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from medseg.atomic import write_text_atomic
from medseg.data.fingerprint import fingerprint_cache_path
from medseg.data.formats import DatasetSpec
from medseg.data.validation import validate_dataset
from medseg.option_values import DEFAULT_BUDGET_FRACTION, SIMULATED_CAPACITY_GIB
from medseg.planning.budget import usable_cuda_bytes
from medseg.planning.cache import PlanCache, plan_key
from medseg.planning.cuda_steps import cuda_recipe_step_cost
from medseg.planning.dataset_plan import StepCosts, TrainingPlan, make_plan
from medseg.planning.fake_tensor import fake_tensor_step_cost

MiB = 2**20


def config_yaml(plan: TrainingPlan) -> str:
    """Return a ``python -m medseg.train --config`` file of the plan's chosen precision, a comment on each value."""
    chosen = plan.chosen
    others = "; ".join(f"{p.precision}: patch {p.patch_size}, batch {p.batch_size}" for p in plan.precisions if p is not chosen)
    norm = plan.normalization
    dump = json.dumps
    lines = [
        f"# Planned by python -m medseg.plan for {plan.dataset}",
        f"# GPU memory {plan.capacity_bytes / 2**30:g} GiB, budget {plan.budget_fraction:g} of it; memory {plan.memory_source}",
        "trainer:",
        f"  precision: {chosen.precision}  # mixed precision gets the larger patch or batch{f' ({others})' if others else ''}",
        "model:",
        "  network: UNet  # nnU-Net-style plain 3D UNet",
        "  network_kwargs:",
        f"    channels: {dump(chosen.network_kwargs['channels'])}  # {32} doubling per level, at most 320 (nnU-Net)",
        f"    strides: {dump(chosen.network_kwargs['strides'])}  # pool each axis while it stays >= 4 voxels (bottleneck ~4 per axis)",
        f"    num_res_units: {chosen.network_kwargs['num_res_units']}  # the default UNet's residual units",
        "data:",
        f"  root: {dump(plan.dataset)}  # the planned dataset",
        f"  spacing: {dump(plan.spacing)}  # {plan.spacing_reason}",
        f"  patch_size: {dump(chosen.patch_size)}  # largest patch (up to the median shape {plan.median_shape}) whose step at batch 2 "
        f"fits: peak {chosen.peak_bytes / MiB:.0f} MiB of {chosen.budget_bytes / MiB:.0f} MiB at batch {chosen.batch_size}",
        f"  batch_size: {chosen.batch_size}  # {chosen.batch_reason}",
        f"  normalization: {norm['normalization']}  # {plan.normalization_reason}",
        "  num_workers: auto  # data-loading processes from the device and the cores: up to 12 per GPU, none on a 2-core CPU",
    ]
    if norm["normalization"] == "ct_zscore":
        lines += [
            f"  ct_window: {dump(norm['ct_window'])}  # 0.5 and 99.5 percentiles of foreground HU",
            f"  ct_mean: {norm['ct_mean']}  # foreground HU mean",
            f"  ct_std: {norm['ct_std']}  # foreground HU standard deviation",
        ]
    lines += [
        "batch_planner:",
        f"  max_batch_size: {chosen.batch_size}  # on a GPU the batch planner verifies the plan's batch with real steps, never going above it",
    ]
    return "\n".join(lines) + "\n"


@dataclass
class StoredPlan:
    """A plan with where it lies: its training config, and whether it came from the cache."""

    plan: TrainingPlan
    config_path: Path
    cached: bool


def plan_dataset(
    spec: DatasetSpec, cache_dir: str | Path, capacity_bytes: int, step_costs: StepCosts, memory_source: str,
    precisions=("32-true", "16-mixed"), budget_fraction: float = DEFAULT_BUDGET_FRACTION, show_progress: bool = True,
) -> StoredPlan:
    """Return the cached plan of this dataset (unchanged files) and GPU, or check the dataset, plan and cache it.

    The plan record lies in the plan cache (``<cache_dir>/plans/plans.json``), its training config beside it.
    """
    fingerprint = validate_dataset(spec, show_progress, cache_path=fingerprint_cache_path(cache_dir, spec.root))
    # a GPU's usable memory varies by a few MiB between starts: tenths of a GiB still find the plan
    key = plan_key({
        "dataset": str(spec.root), "fingerprint": fingerprint.to_dict(), "capacity_gib": round(capacity_bytes / 2**30, 1),
        "precisions": list(precisions), "budget_fraction": budget_fraction, "memory_source": memory_source,
    })
    folder = Path(cache_dir) / "plans"
    cache, config_path = PlanCache(folder / "plans.json"), folder / f"{spec.root.name}-{key}.yaml"
    record = cache.get(key)
    if record is not None and config_path.is_file():
        return StoredPlan(TrainingPlan.from_dict(record), config_path, cached=True)
    plan = make_plan(fingerprint, capacity_bytes, step_costs, memory_source, precisions, budget_fraction)
    cache.put(key, plan.to_dict())
    write_text_atomic(config_path, config_yaml(plan))
    return StoredPlan(plan, config_path, cached=False)


def plan_for_training(
    spec: DatasetSpec, cache_dir: str | Path, capacity_gib: float | None = None, precisions=("32-true", "16-mixed"),
    budget_fraction: float = DEFAULT_BUDGET_FRACTION, show_progress: bool = True,
) -> StoredPlan:
    """Return the (cached) plan: for a GPU of ``capacity_gib`` with fake steps; without it, for this machine's CUDA GPU
    (the memory this process may use, within its cap) with measured steps, else for a simulated GPU of
    ``SIMULATED_CAPACITY_GIB``. A capacity given is honoured on a GPU machine too: planning for another GPU than the
    one at hand."""
    if capacity_gib is None and torch.cuda.is_available():
        step_costs, source = cuda_recipe_step_cost, f"measured on {torch.cuda.get_device_name()}"
        capacity = usable_cuda_bytes(torch.device("cuda"))
    else:
        step_costs, source = fake_tensor_step_cost, "fake-tensor estimate"
        capacity = int((SIMULATED_CAPACITY_GIB if capacity_gib is None else capacity_gib) * 2**30)
    return plan_dataset(spec, cache_dir, capacity, step_costs, source, precisions, budget_fraction, show_progress)
