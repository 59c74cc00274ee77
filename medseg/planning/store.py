"""Plans on disk: the JSON record, the training config with a comment on every value, and the cache keyed by
fingerprint and GPU, so a later start on the same dataset and GPU reuses the plan without reading voxels."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from medseg.atomic import write_text_atomic
from medseg.data.fingerprint import fingerprint_cache_path
from medseg.data.formats import DatasetSpec
from medseg.data.validation import validate_dataset
from medseg.planning.estimate import StepCost, estimated_step, measured_step
from medseg.planning.plan import TrainingPlan, make_plan

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


def plan_key(spec: DatasetSpec, fingerprint_json: str, capacity_bytes: int, precisions, budget_fraction: float, memory_source: str) -> str:
    """Return the cache key of a plan: everything that changes it."""
    parts = json.dumps([str(spec.root), fingerprint_json, capacity_bytes, list(precisions), budget_fraction, memory_source])
    return hashlib.sha256(parts.encode()).hexdigest()[:16]


@dataclass
class StoredPlan:
    """A plan with where it lies: its JSON record and training config, and whether it came from the cache."""

    plan: TrainingPlan
    json_path: Path
    config_path: Path
    cached: bool


def plan_dataset(
    spec: DatasetSpec, cache_dir: str | Path, capacity_bytes: int, step_cost: StepCost, memory_source: str,
    precisions=("32-true", "16-mixed"), budget_fraction: float = 0.9, show_progress: bool = True,
) -> StoredPlan:
    """Return the cached plan of this dataset (unchanged files) and GPU, or check the dataset, plan and cache it."""
    fingerprint = validate_dataset(spec, show_progress, cache_path=fingerprint_cache_path(cache_dir, spec.root))
    key = plan_key(spec, json.dumps(fingerprint.to_dict()), capacity_bytes, precisions, budget_fraction, memory_source)
    folder = Path(cache_dir) / "plans"
    json_path, config_path = folder / f"{spec.root.name}-{key}.json", folder / f"{spec.root.name}-{key}.yaml"
    if json_path.is_file() and config_path.is_file():
        return StoredPlan(TrainingPlan.from_dict(json.loads(json_path.read_text())), json_path, config_path, cached=True)
    plan = make_plan(fingerprint, capacity_bytes, step_cost, memory_source, precisions, budget_fraction)
    write_text_atomic(json_path, json.dumps(plan.to_dict(), indent=2))
    write_text_atomic(config_path, config_yaml(plan))
    return StoredPlan(plan, json_path, config_path, cached=False)


# GPU memory planned for when none is given and there is no CUDA GPU to measure
SIMULATED_CAPACITY_GIB = 8.0


def plan_for_training(
    spec: DatasetSpec, cache_dir: str | Path, capacity_gib: float | None = None, precisions=("32-true", "16-mixed"),
    budget_fraction: float = 0.9, show_progress: bool = True,
) -> StoredPlan:
    """Return the (cached) plan: for a GPU of ``capacity_gib`` with fake steps; without it, for this machine's CUDA GPU
    with measured steps, else for a simulated GPU of ``SIMULATED_CAPACITY_GIB``. A capacity given is honoured on a GPU
    machine too: planning for another GPU than the one at hand."""
    if capacity_gib is None and torch.cuda.is_available():
        step_cost, source = measured_step, f"measured on {torch.cuda.get_device_name()}"
        capacity = torch.cuda.get_device_properties(0).total_memory
    else:
        step_cost, source = estimated_step, "fake-tensor estimate"
        capacity = int((SIMULATED_CAPACITY_GIB if capacity_gib is None else capacity_gib) * 2**30)
    return plan_dataset(spec, cache_dir, capacity, step_cost, source, precisions, budget_fraction, show_progress)
