"""The dataset plan (a training configuration): spacing, normalisation, and per precision the patch, network and batch that fit the memory budget.

Like nnU-Net's plans.json the result is plain data (``DatasetPlan.to_dict``), written as JSON and as a
training config. Unlike nnU-Net, every candidate's memory is measured (CUDA) or estimated on fake
tensors, not read off a feature-map count.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from medseg.data.fingerprint import DatasetFingerprint
from medseg.errors import MedsegError
from medseg.option_values import COMPARED_PRECISIONS, DEFAULT_BUDGET_FRACTION, DEFAULT_PLANNED_NETWORK
from medseg.planning import rules
from medseg.planning.batch_search import MemoryFit, search_batch_size
from medseg.planning.budget import budget_bytes
from medseg.planning.step import StepCost
from medseg.recipe import NNUNET_OPTIMIZER, OptimizerSettings, Recipe

log = logging.getLogger(__name__)

StepCosts = Callable[[Recipe, str], StepCost]  # a candidate and a precision -> its step cost on one backend

# why each planned network is what it is (the plan and the config's header say it)
NETWORK_REASONS = {
    "plain": "nnU-Net's default network class (PlainConvUNet as a MONAI DynUNet): a full-resolution first stage, two "
             "convolutions per stage, deep supervision, trained with nnU-Net's SGD and augmentation",
    "resenc": "nnU-Net's residual-encoder class (a MONAI DynUNet with residual blocks, 1, 3, 4, 6, ... per encoder stage): a "
              "full-resolution first stage, deep supervision, trained with nnU-Net's SGD and augmentation",
    "tutorial": "MONAI's spleen-tutorial UNet, asked for: stride 2 from its first layer, no deep supervision, AdamW",
}


@dataclass
class PrecisionConfig:
    """What one precision gets: the largest patch with its network at batch 2 in budget, then the batch the batch search
    verifies (``search_batch_size``, as training searches it), within what the dataset warrants.

    Attributes:
        precision: Lightning precision string.
        patch_size: training patch (x, y, z) in voxels at the target spacing.
        network_kwargs: the MONAI network's arguments (DynUNet: kernels, strides, filters, deep supervision; UNet:
            channels, strides per level and axis, residual units).
        batch_size, batch_reason: the batch and the rule that set it.
        peak_bytes: the step's peak at ``batch_size``: its verified trial's (the fitted line's below a throughput knee).
        budget_bytes: memory a step may use.
        fixed_bytes, per_sample_bytes: the fitted line ``peak = fixed + per_sample x batch``.
        samples_per_second: per batch size, where steps were timed (GPU only).
        candidates: every (patch, peak bytes at batch 2 or None when out of memory) tried, in order.
        network: the MONAI network ("DynUNet", or "UNet" for the tutorial network).
    """

    precision: str
    patch_size: list[int]
    network_kwargs: dict[str, Any]
    batch_size: int
    batch_reason: str
    peak_bytes: float
    budget_bytes: int
    fixed_bytes: float
    per_sample_bytes: float
    samples_per_second: dict[int, float] = field(default_factory=dict)
    candidates: list[list] = field(default_factory=list)  # [patch, peak bytes or None], as JSON keeps them
    network: str = "UNet"


@dataclass
class DatasetPlan:
    """A whole training configuration for one dataset and one GPU (real or simulated), with the reasons behind it.

    ``network`` is the planned network ("plain", "resenc" or "tutorial") and ``network_reason`` why; ``preset`` the
    residual-encoder preset ("M", "L", "XL") it was planned as, if any."""

    dataset: str
    channel_names: list[str]
    class_names: list[str]
    spacing: list[float]
    spacing_reason: str
    median_shape: list[float]
    dataset_voxels: float
    normalization: dict[str, Any]
    normalization_reason: str
    capacity_bytes: int
    budget_fraction: float
    memory_source: str
    precisions: list[PrecisionConfig]
    plan_seconds: float = 0.0
    network: str = "tutorial"
    network_reason: str = ""
    preset: str | None = None

    @property
    def chosen(self) -> PrecisionConfig:
        """Return the precision the training config trains with: mixed precision where planned (what a GPU runs), else the first."""
        return next((p for p in self.precisions if p.precision.endswith("-mixed")), self.precisions[0])

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DatasetPlan:
        precisions = [PrecisionConfig(**{**p, "samples_per_second": {int(k): v for k, v in p["samples_per_second"].items()}}) for p in data["precisions"]]
        return cls(**{**data, "precisions": precisions})


def check_plannable(fingerprint: DatasetFingerprint) -> None:
    """Raise a one-line error when the dataset cannot be planned for: one case, or no foreground anywhere."""
    if len(fingerprint.cases) < 2:
        raise MedsegError(f"{fingerprint.root}: planning needs at least 2 cases (training and validation), the dataset has {len(fingerprint.cases)}")
    if fingerprint.class_voxels()[1:].sum() == 0:
        raise MedsegError(f"{fingerprint.root}: every label is background (no voxel of {', '.join(fingerprint.class_names[1:])}); label some foreground first")


def planned_optimizer(network: str) -> OptimizerSettings:
    """Return the optimizer a planned network trains with: nnU-Net's SGD for its class of network, else the default."""
    return OptimizerSettings() if network == "tutorial" else NNUNET_OPTIMIZER


def _recipe(fingerprint: DatasetFingerprint, spacing, patch: Sequence[int], precision: str, network: str) -> tuple[Recipe, list[int]]:
    name, size, kwargs, divisors = rules.network_for_patch(network, patch, spacing)
    recipe = Recipe(
        name, kwargs, fingerprint.channel_names, fingerprint.class_names, tuple(size), precision=precision,
        optimizer=planned_optimizer(network),
    )
    return recipe, divisors


def largest_patch(
    fingerprint: DatasetFingerprint, spacing, median_shape, precision: str, budget: int, step_costs: StepCosts,
    network: str = DEFAULT_PLANNED_NETWORK,
):
    """Return the recipe of the largest patch (from nnU-Net's first patch down) whose step at batch 2 fits, and every try.

    After a try over budget the patch shrinks (nnU-Net's steps) until its voxels, scaled from that try's peak,
    would fit; then that patch is costed, so a search takes a few steps instead of one per shrink.
    """
    patch = rules.first_patch(spacing, median_shape)
    tried: list[list] = []
    while True:
        recipe, divisors = _recipe(fingerprint, spacing, patch, precision, network)
        step = step_costs(recipe, precision)(rules.MIN_BATCH_SIZE)
        tried.append([list(recipe.patch_size), step.peak_bytes])
        if step.fits and step.peak_bytes <= budget:
            return recipe, tried
        share = budget / step.peak_bytes if step.fits else 0.5
        target_voxels = 0.95 * share * math.prod(recipe.patch_size)
        patch = rules.smaller_patch(recipe.patch_size, median_shape, divisors)
        while math.prod(patch) > target_voxels:
            patch = rules.smaller_patch(patch, median_shape, rules.network_for_patch(network, patch, spacing)[3])


def configure_precision(
    fingerprint: DatasetFingerprint, spacing, median_shape, dataset_voxels: float, precision: str, budget: int, step_costs: StepCosts,
    network: str = DEFAULT_PLANNED_NETWORK,
) -> PrecisionConfig:
    """Return one precision's patch, network and batch under ``budget``."""
    recipe, tried = largest_patch(fingerprint, spacing, median_shape, precision, budget, step_costs, network)
    step_cost = step_costs(recipe, precision)
    limit = rules.dataset_batch_limit(recipe.patch_size, dataset_voxels)
    search = search_batch_size(step_cost, precision, budget, max_batch_size=limit)  # the training planner's search
    batch = search.batch_size
    if batch == limit:
        reason = f"at most {rules.MAX_DATASET_SHARE:.0%} of the dataset's voxels per step"
    else:
        reason = "the largest batch the memory budget holds (verified)"
    fit = MemoryFit(search.fixed_bytes, search.per_sample_bytes)
    throughput: dict[int, float] = {}
    if search.samples_per_second:  # timed steps (a GPU): stop where doubling the batch stops paying
        size = rules.MIN_BATCH_SIZE
        while size <= batch:
            step = step_cost(size)
            if not step.fits or not step.seconds:
                break
            throughput[size] = size / step.seconds
            size *= 2
        knee = rules.throughput_knee(throughput)
        if knee < batch:
            batch, reason = knee, f"samples/s rises < {rules.THROUGHPUT_GAIN:.0%} per doubling beyond it"
    peak = search.measured_peak_bytes if batch == search.batch_size else fit.peak_bytes(batch)
    return PrecisionConfig(
        precision, list(recipe.patch_size), recipe.network_kwargs, batch, reason, peak, budget,
        fit.fixed_bytes, fit.per_sample_bytes, throughput, tried, recipe.network,
    )


def make_plan(
    fingerprint: DatasetFingerprint,
    capacity_bytes: int,
    step_costs: StepCosts,
    memory_source: str,
    precisions: Sequence[str] = COMPARED_PRECISIONS,
    budget_fraction: float = DEFAULT_BUDGET_FRACTION,
    network: str = DEFAULT_PLANNED_NETWORK,
    preset: str | None = None,
) -> DatasetPlan:
    """Return the training plan of a checked dataset for a GPU of ``capacity_bytes``.

    Args:
        fingerprint: the dataset's fingerprint (``medseg.data.validation.validate_dataset``).
        capacity_bytes: GPU memory this process can use (the real one's within its cap, or a simulated one's).
        step_costs: gives a candidate's step cost (``fake_tensor_step_cost``, or ``cuda_recipe_step_cost`` on a GPU).
        memory_source: how ``step_costs`` know, for the report.
        precisions: the precisions to plan side by side.
        budget_fraction: share of the capacity a step may use.
        network: the network to plan ("plain", "resenc", "tutorial"; ``NETWORK_REASONS`` says what each is).
        preset: the residual-encoder preset the capacity stands for ("M", "L", "XL"), for the report.
    """
    start = time.perf_counter()
    check_plannable(fingerprint)
    spacing, spacing_reason = rules.target_spacing(fingerprint)
    shapes = rules.resampled_shapes(fingerprint, spacing)
    median_shape = np.median(shapes, axis=0)
    dataset_voxels = float(np.prod(shapes, axis=1).sum())
    normalization, normalization_reason = rules.normalization(fingerprint)
    budget = budget_bytes(capacity_bytes, budget_fraction)
    configs = [configure_precision(fingerprint, spacing, median_shape, dataset_voxels, p, budget, step_costs, network) for p in precisions]
    plan = DatasetPlan(
        fingerprint.root, list(fingerprint.channel_names), list(fingerprint.class_names), list(spacing), spacing_reason,
        [round(float(v), 1) for v in median_shape], dataset_voxels, normalization, normalization_reason, capacity_bytes,
        budget_fraction, memory_source, configs, time.perf_counter() - start, network,
        (f"preset {preset}: " if preset else "") + NETWORK_REASONS[network], preset,
    )
    for p in configs:
        log.info("%s: patch %s, batch %d (%s), peak %.0f of %.0f MiB", p.precision, p.patch_size, p.batch_size, p.batch_reason, p.peak_bytes / 2**20, budget / 2**20)
    return plan
