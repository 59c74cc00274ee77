"""Dataset plans on disk: the record in the plan cache, keyed by fingerprint and GPU, and the training config with a
header saying why each value is what it is, so a later start on the same dataset and GPU reuses the plan without reading voxels."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from medseg.atomic import write_text_atomic
from medseg.data.fingerprint import fingerprint_cache_path
from medseg.data.formats import DatasetSpec
from medseg.data.validation import validate_dataset
from medseg.data.transforms import NNUNET_AUGMENTATION, Augmentation
from medseg.errors import MedsegError
from medseg.option_values import COMPARED_PRECISIONS, DEFAULT_BUDGET_FRACTION, DEFAULT_PLANNED_NETWORK, RESENC_PRESETS, SIMULATED_CAPACITY_GIB
from medseg.planning.budget import usable_cuda_bytes
from medseg.planning.cache import PlanningCache, cache_key
from medseg.planning.cuda_steps import cuda_recipe_step_cost
from medseg.planning.dataset_plan import StepCosts, DatasetPlan, make_plan, planned_optimizer
from medseg.planning.fake_tensor import fake_tensor_step_cost
from medseg.recipe import OptimizerSettings

MiB = 2**20


def changed_fields(record: Any, default: Any) -> dict[str, Any]:
    """Return the fields of a settings record that differ from ``default``'s, as plain data (tuples as lists)."""
    changed = {key: value for key, value in asdict(record).items() if value != getattr(default, key)}
    return {key: list(value) if isinstance(value, tuple) else value for key, value in changed.items()}


def training_config(plan: DatasetPlan) -> dict[str, Any]:
    """Return the ``python -m medseg.train`` settings of the plan's chosen precision that differ from training's defaults:
    for nnU-Net's class of network also nnU-Net's optimizer and augmentation (``configs/nnunet_like.yaml``'s)."""
    chosen = plan.chosen
    model: dict[str, Any] = {"network": chosen.network, "network_kwargs": dict(chosen.network_kwargs)}
    data: dict[str, Any] = {}
    if plan.network != "tutorial":
        model["optimizer"] = changed_fields(planned_optimizer(plan.network), OptimizerSettings())
        data["augmentation"] = changed_fields(NNUNET_AUGMENTATION, Augmentation())
    return {
        "trainer": {"precision": chosen.precision},
        "model": model,
        "data": {
            "root": plan.dataset,
            "spacing": list(plan.spacing),
            "patch_size": list(chosen.patch_size),
            "batch_size": chosen.batch_size,
            **plan.normalization,
            "num_workers": "auto",
            **data,
        },
        "batch_planner": {"max_batch_size": chosen.batch_size},
    }


class _ConfigDumper(yaml.SafeDumper):
    """YAML as the shipped configs are written: mappings as blocks, lists on one line."""


_ConfigDumper.add_representer(list, lambda dumper, values: dumper.represent_sequence("tag:yaml.org,2002:seq", values, flow_style=True))


def config_yaml(plan: DatasetPlan) -> str:
    """Return a ``python -m medseg.train --config`` file of ``training_config``, headed by why each value is what it is."""
    chosen = plan.chosen
    others = "; ".join(f"{p.precision}: patch {p.patch_size}, batch {p.batch_size}" for p in plan.precisions if p is not chosen)
    reasons = [
        f"Planned by python -m medseg.plan for {plan.dataset}",
        f"GPU memory {plan.capacity_bytes / 2**30:g} GiB, budget {plan.budget_fraction:g} of it; memory {plan.memory_source}",
        f"trainer.precision: mixed precision gets the larger patch or batch{f' ({others})' if others else ''}",
        f"model.network: {plan.network_reason}",
        "model.network_kwargs: 32 channels doubling per stage up to 320; strides and kernels from the spacing "
        "(nnU-Net's get_pool_and_conv_props), each axis pooled while it stays >= 4 voxels",
        *(["model.optimizer, data.augmentation: nnU-Net's training recipe for its class of network (configs/nnunet_like.yaml's)"]
          if plan.network != "tutorial" else []),
        f"data.spacing: {plan.spacing_reason}",
        f"data.patch_size: largest patch (up to the median shape {plan.median_shape}) whose step at batch 2 fits: "
        f"peak {chosen.peak_bytes / MiB:.0f} MiB of {chosen.budget_bytes / MiB:.0f} MiB at batch {chosen.batch_size}",
        f"data.batch_size: {chosen.batch_reason}",
        f"data.normalization: {plan.normalization_reason}",
        "data.num_workers: from the device and the cores: up to 12 per GPU, none on a 2-core CPU",
        "batch_planner.max_batch_size: on a GPU the batch planner verifies the plan's batch with real steps, never going above it",
    ]
    header = "".join(f"# {line}\n" for line in reasons)
    return header + yaml.dump(training_config(plan), Dumper=_ConfigDumper, sort_keys=False)


@dataclass
class StoredPlan:
    """A plan with where it lies: its training config, and whether it came from the cache."""

    plan: DatasetPlan
    config_path: Path
    cached: bool


def plan_dataset(
    spec: DatasetSpec, cache_dir: str | Path, capacity_bytes: int, step_costs: StepCosts, memory_source: str,
    precisions=COMPARED_PRECISIONS, budget_fraction: float = DEFAULT_BUDGET_FRACTION, show_progress: bool = True,
    network: str = DEFAULT_PLANNED_NETWORK, preset: str | None = None,
) -> StoredPlan:
    """Return the cached plan of this dataset (unchanged files), GPU and network, or check the dataset, plan and cache it.

    The plan record lies in the plan cache (``<cache_dir>/plans/plans.json``), its training config beside it.
    """
    fingerprint = validate_dataset(spec, show_progress, cache_path=fingerprint_cache_path(cache_dir, spec.root))
    # a GPU's usable memory varies by a few MiB between starts: tenths of a GiB still find the plan
    key = cache_key({
        "dataset": str(spec.root), "fingerprint": fingerprint.to_dict(), "capacity_gib": round(capacity_bytes / 2**30, 1),
        "precisions": list(precisions), "budget_fraction": budget_fraction, "memory_source": memory_source,
        "network": network, "preset": preset,
    })
    folder = Path(cache_dir) / "plans"
    cache, config_path = PlanningCache(folder / "plans.json"), folder / f"{spec.root.name}-{key}.yaml"
    record = cache.get(key)
    if record is not None and config_path.is_file():
        return StoredPlan(DatasetPlan.from_dict(record), config_path, cached=True)
    plan = make_plan(fingerprint, capacity_bytes, step_costs, memory_source, precisions, budget_fraction, network, preset)
    cache.put(key, plan.to_dict())
    write_text_atomic(config_path, config_yaml(plan))
    return StoredPlan(plan, config_path, cached=False)


def plan_for_training(
    spec: DatasetSpec, cache_dir: str | Path, capacity_gib: float | None = None, precisions=COMPARED_PRECISIONS,
    budget_fraction: float = DEFAULT_BUDGET_FRACTION, show_progress: bool = True, network: str | None = None,
    preset: str | None = None,
) -> StoredPlan:
    """Return the (cached) plan: for a GPU of ``capacity_gib`` with fake steps; without it, for this machine's CUDA GPU
    (the memory this process may use, within its cap) with measured steps, else for a simulated GPU of
    ``SIMULATED_CAPACITY_GIB``. A capacity given is honoured on a GPU machine too: planning for another GPU than the
    one at hand.

    ``network`` is the network to plan (default ``DEFAULT_PLANNED_NETWORK``). A ``preset`` ("M", "L", "XL": nnU-Net's
    residual-encoder presets) plans its GPU size (``capacity_gib`` from ``RESENC_PRESETS``) and, unless ``network``
    says otherwise, the residual-encoder network."""
    if preset is not None:
        if preset not in RESENC_PRESETS:
            raise MedsegError(f"unknown preset {preset!r}: choose one of {', '.join(RESENC_PRESETS)}")
        if capacity_gib is not None:
            raise MedsegError(f"give --preset or --capacity_gib, not both: preset {preset} plans for a {RESENC_PRESETS[preset][0]} GiB GPU")
        capacity_gib, network = RESENC_PRESETS[preset][0], network or "resenc"
    network = network or DEFAULT_PLANNED_NETWORK
    if capacity_gib is None and torch.cuda.is_available():
        step_costs, source = cuda_recipe_step_cost, f"measured on {torch.cuda.get_device_name()}"
        capacity = usable_cuda_bytes(torch.device("cuda"))
    else:
        step_costs, source = fake_tensor_step_cost, "fake-tensor estimate"
        capacity = int((SIMULATED_CAPACITY_GIB if capacity_gib is None else capacity_gib) * 2**30)
    return plan_dataset(spec, cache_dir, capacity, step_costs, source, precisions, budget_fraction, show_progress, network, preset)
