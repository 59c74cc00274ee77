"""Batch-size planning: fit peak = fixed + per_sample x b on small sizes, predict, verify, back off by bisection.

A probe runs one trial at a batch size (a warm-up step, then steady-state steps) and reports its peaks (CUDA
measurement or the simulated device). The line is fitted to the steady-state peaks and the budget holds them;
the warm-up, where cuDNN autotunes the shape, has the rest of the memory up to the cap and must run in it. The
planner only ever returns a size whose trial did both.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from medseg.atomic import write_text_atomic
from medseg.errors import MedsegError
from medseg.memory.measure import Probe, StepMeasurement, TrainingSetup, cuda_budget_bytes, measure_cuda_step, preserved_weights
from medseg.memory.simulate import SimulatedDevice

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MemoryFit:
    """Straight-line model of a step's peak memory: ``fixed_bytes + per_sample_bytes * batch_size``."""

    fixed_bytes: float
    per_sample_bytes: float

    def peak_bytes(self, batch_size: int) -> float:
        """Return the predicted peak at ``batch_size``."""
        return self.fixed_bytes + self.per_sample_bytes * batch_size

    def largest_batch_size(self, budget_bytes: float) -> int:
        """Return the largest batch size whose predicted peak is within ``budget_bytes`` (0 if none)."""
        if self.per_sample_bytes <= 0:
            raise ValueError(f"memory does not grow with batch size (per sample {self.per_sample_bytes:.0f} bytes)")
        return max(0, math.floor((budget_bytes - self.fixed_bytes) / self.per_sample_bytes))


def fit_memory(measurements: Sequence[StepMeasurement]) -> MemoryFit:
    """Return the least-squares line through the peaks of the successful measurements (two sizes at least)."""
    points = [(m.batch_size, m.peak_bytes) for m in measurements if m.peak_bytes is not None]
    sizes = {b for b, _ in points}
    if len(sizes) < 2:
        raise ValueError(f"fitting memory needs two distinct batch sizes that fit, got {sorted(sizes)}")
    mean_b = sum(b for b, _ in points) / len(points)
    mean_p = sum(p for _, p in points) / len(points)
    slope = sum((b - mean_b) * (p - mean_p) for b, p in points) / sum((b - mean_b) ** 2 for b, _ in points)
    return MemoryFit(fixed_bytes=mean_p - slope * mean_b, per_sample_bytes=slope)


@dataclass
class BatchPlan:
    """The verified batch size for one precision on one device, with the figures behind it.

    Attributes:
        precision: Lightning precision string.
        batch_size: largest batch size verified by a real (or simulated) step within the budget.
        budget_bytes: memory the step may use.
        fixed_bytes: fitted memory independent of batch size (weights, gradients, optimizer state, workspace).
        per_sample_bytes: fitted memory per sample.
        predicted_peak_bytes: the fit's peak at ``batch_size``.
        measured_peak_bytes: the trial's steady-state peak at ``batch_size`` (the steps after the first).
        first_step_peak_bytes: the trial's first-step peak at ``batch_size``, cuDNN autotuning included; it ran
            under the device's cap with autotuning on, as training's first step does (None where not measured).
        samples_per_second: throughput of the trial at ``batch_size`` (None where no time was measured).
        trials: every trial step, in the order run.
        plan_seconds: wall time of planning.
        device_name: the device planned on (cache key).
        backend: "cuda", "simulated" or "cpu-estimator+simulated".
        train: False for forward-only (inference) planning.
        cache_key: the plan cache key it is stored under ("" when not cached).
        failed_batch_size: smallest size that ran out of memory in training after planning (a larger case,
            fragmentation); later runs stay below it.
    """

    precision: str
    batch_size: int
    budget_bytes: int
    fixed_bytes: float
    per_sample_bytes: float
    predicted_peak_bytes: float
    measured_peak_bytes: int
    samples_per_second: float | None
    first_step_peak_bytes: int | None = None
    trials: list[StepMeasurement] = field(default_factory=list)
    plan_seconds: float = 0.0
    device_name: str = ""
    backend: str = ""
    train: bool = True
    cache_key: str = ""
    failed_batch_size: int | None = None

    @property
    def verified_batch_sizes(self) -> list[int]:
        """Return the sizes whose trials fitted within the budget, largest first (for OOM back-off)."""
        return sorted({t.batch_size for t in self.trials if _within(t, self.budget_bytes)}, reverse=True)

    def usable_batch_size(self, max_batch_size: int) -> int:
        """Return the largest verified size within ``max_batch_size`` and below ``failed_batch_size``.

        Without one, the limit itself: a smaller size than a verified one fits too, and the limit comes from an
        out-of-memory recovery.
        """
        limit = min(max_batch_size, (self.failed_batch_size or max_batch_size + 1) - 1)
        return max((b for b in self.verified_batch_sizes if b <= limit), default=limit)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BatchPlan:
        """Rebuild a plan from ``to_dict`` output."""
        trials = [StepMeasurement(**t) for t in data["trials"]]
        return cls(**{**data, "trials": trials})


def _within(trial: StepMeasurement, budget_bytes: int) -> bool:
    return trial.peak_bytes is not None and trial.peak_bytes <= budget_bytes


def plan_batch_size(
    probe: Probe,
    precision: str,
    budget_bytes: int,
    fit_sizes: Sequence[int] = (1, 2, 4),
    max_batch_size: int = 1024,
    refits: int = 2,
) -> BatchPlan:
    """Return the largest batch size whose trial step fits in ``budget_bytes``, found by fit, verify and bisection.

    Args:
        probe: runs one trial step at a batch size for ``precision``.
        precision: Lightning precision string, recorded in the plan.
        budget_bytes: memory a step may use; a trial above it counts as failed even without an OOM.
        fit_sizes: small sizes measured first to fit the line (stops at the first that fails).
        max_batch_size: never plan above this (also the ceiling after an OOM recovery).
        refits: how many times a verified prediction is refitted and pushed further (when the line
            underestimated, the first prediction leaves memory unused).
    """
    if max_batch_size < 1:
        raise MedsegError(f"max batch size must be at least 1, got {max_batch_size}")
    start = time.perf_counter()
    trials: list[StepMeasurement] = []
    good, bad = 0, max_batch_size + 1  # largest size that fitted, smallest that failed

    def trial(batch_size: int) -> None:
        nonlocal good, bad
        result = probe(batch_size)
        trials.append(result)
        if _within(result, budget_bytes):
            good = max(good, batch_size)
        else:
            bad = min(bad, batch_size)

    for size in sorted(s for s in fit_sizes if s <= max_batch_size):
        trial(size)
        if good < size:
            break
    for _ in range(refits + 1):
        fit = _fit_measured(trials)
        if fit is None or bad - good <= 1:
            break
        # a flat or falling line (noise at tiny sizes) predicts nothing: grow geometrically instead
        predicted = fit.largest_batch_size(budget_bytes) if fit.per_sample_bytes > 0 else 2 * good
        candidate = min(predicted, bad - 1)
        if candidate <= good:
            break
        trial(candidate)
        if good < candidate:
            break
    while bad - good > 1 and bad <= max_batch_size:
        trial((good + bad) // 2)
    if good == 0:
        raise MedsegError(
            f"{precision}: batch size 1 does not fit in the memory budget of {budget_bytes / 2**20:.0f} MiB:"
            " use a smaller patch size or model, or a larger budget fraction"
        )

    fit = _fit_measured(trials) or MemoryFit(float(trials[0].peak_bytes or 0), 0.0)
    chosen = [t for t in trials if t.batch_size == good and _within(t, budget_bytes)][-1]
    plan = BatchPlan(
        precision=precision,
        batch_size=good,
        budget_bytes=budget_bytes,
        fixed_bytes=fit.fixed_bytes,
        per_sample_bytes=fit.per_sample_bytes,
        predicted_peak_bytes=fit.peak_bytes(good),
        measured_peak_bytes=int(chosen.peak_bytes or 0),
        samples_per_second=good / chosen.seconds if chosen.seconds else None,
        first_step_peak_bytes=chosen.first_step_peak_bytes,
        trials=trials,
        plan_seconds=time.perf_counter() - start,
    )
    log.info(
        "%s: batch size %d verified (peak %.0f MiB of %.0f MiB budget; fit %.0f MiB fixed + %.1f MiB/sample; %d trials)",
        precision, good, plan.measured_peak_bytes / 2**20, budget_bytes / 2**20,
        fit.fixed_bytes / 2**20, fit.per_sample_bytes / 2**20, len(trials),
    )
    return plan


def _fit_measured(trials: Sequence[StepMeasurement]) -> MemoryFit | None:
    """Return the line through every measured peak (over budget too: still true data), None below two sizes."""
    measured = [t for t in trials if t.fits]
    return fit_memory(measured) if len({t.batch_size for t in measured}) > 1 else None


def plan_key(
    config: dict[str, Any], patch_size: Sequence[int], precision: str, device_name: str, budget_bytes: int, train: bool, max_batch_size: int
) -> str:
    """Return the cache key of a plan: a hash of everything that changes its outcome.

    The budget (the share of the memory free at planning time) counts in whole GiB, so a plan made on an idle
    GPU is not reused on a busy one, while the few MiB free memory varies between runs still find the plan.
    """
    parts = {
        "config": config, "patch_size": list(patch_size), "precision": precision, "device": device_name,
        "budget_gib": budget_bytes // 2**30, "train": train, "max_batch_size": max_batch_size,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


class PlanCache:
    """Plans stored as JSON by key, so that a rerun with the same model, patch, precision and GPU does not re-measure."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def _read(self) -> dict[str, Any]:
        if not self.path.exists():
            return {}
        try:
            return json.loads(self.path.read_text())
        except json.JSONDecodeError as err:
            raise MedsegError(f"batch plan cache {self.path} is not valid JSON ({err}): delete it to re-plan") from None

    def get(self, key: str) -> BatchPlan | None:
        """Return the cached plan for ``key``, or None."""
        entry = self._read().get(key)
        return BatchPlan.from_dict(entry) if entry is not None else None

    def put(self, key: str, plan: BatchPlan) -> None:
        """Store ``plan`` under ``key``, keeping the other entries."""
        entries = self._read()
        entries[key] = plan.to_dict()
        # DDP ranks share the file: no reader may ever see half of it
        write_text_atomic(self.path, json.dumps(entries, indent=2))

    def record_out_of_memory(self, plan: BatchPlan, batch_size: int) -> None:
        """Store that training at ``batch_size`` ran out of memory, so that the next run of this plan stays below it."""
        plan.failed_batch_size = min(batch_size, plan.failed_batch_size or batch_size)
        self.put(plan.cache_key, plan)


def _probe(setup: TrainingSetup, precision: str, budget_fraction: float, train: bool, simulated_device: SimulatedDevice | None) -> tuple[Probe, int, str, str]:
    """Return (probe, budget bytes, device name, backend) for the device the model is on, or the simulated one."""
    if simulated_device is not None:
        budget = int(budget_fraction * simulated_device.capacity_bytes)
        return simulated_device.probe(precision, setup, train), budget, simulated_device.name, "simulated"
    device = next(setup.net.parameters()).device
    if device.type != "cuda":
        raise MedsegError(f"planning the batch size needs a CUDA GPU, the model is on {device}")
    probe = lambda b: measure_cuda_step(setup, b, precision, train)  # noqa: E731
    return probe, cuda_budget_bytes(device, budget_fraction), torch.cuda.get_device_name(device), "cuda"


def plan_on_device(
    setup: TrainingSetup,
    precision: str,
    budget_fraction: float = 0.9,
    train: bool = True,
    max_batch_size: int = 1024,
    cache: PlanCache | None = None,
    simulated_device: SimulatedDevice | None = None,
    reserved_bytes: int = 0,
) -> BatchPlan:
    """Return the cached plan for this model, patch, precision, GPU and budget once one step re-verifies it, or plan
    now (weights restored) and cache it.

    ``train=False`` plans forward-only steps under no_grad: the sliding-window batch size for inference.
    ``reserved_bytes`` is left out of the budget for what the steps do not hold themselves but share the GPU
    with (validation windows run beside the training state).
    """
    probe, budget, device_name, backend = _probe(setup, precision, budget_fraction, train, simulated_device)
    budget -= reserved_bytes
    key = plan_key(setup.config, setup.patch_size, precision, device_name, budget, train, max_batch_size)
    cached = cache.get(key) if cache else None
    failed = None
    if cached is not None:
        size = cached.usable_batch_size(max_batch_size)
        with preserved_weights(setup.net):
            check = probe(size)
        if _within(check, budget):
            log.info("batch planner: using the cached %s plan from %s (batch size %d re-verified)", precision, cache.path, size)
            return cached
        log.info("batch planner: the cached %s plan's batch size %d no longer fits: planning again", precision, size)
        failed = cached.failed_batch_size
    with preserved_weights(setup.net):
        plan = plan_batch_size(probe, precision, budget, max_batch_size=max_batch_size)
    plan.device_name, plan.backend, plan.train, plan.failed_batch_size = device_name, backend, train, failed
    if cache:
        plan.cache_key = key
        cache.put(key, plan)
    return plan
