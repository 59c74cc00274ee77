"""The batch search: fit peak = fixed + per_sample x b on small sizes, predict, verify, back off by bisection.

Small helpers around one loop, as Lightning's tuner (``batch_size_scaling.py``) has them: each reads the trials so
far, none keeps state of its own. A step cost runs one trial at a batch size (a warm-up step, then steady-state steps) and reports its peaks (CUDA
measurement or the simulated device). The line is fitted to the steady-state peaks and the budget holds them;
the warm-up, where cuDNN autotunes the shape, has the rest of the memory up to the cap and must run in it. The
planner only ever returns a size whose trial did both.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from medseg.errors import MedsegError
from medseg.planning.step import StepCost, StepMeasurement

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
class BatchSearchResult:
    """What a batch search found: the verified batch size for one precision on one device, with the figures behind it.

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
        estimated_peak_bytes: the fake-tensor estimate of a step at ``batch_size``, beside a measured search (None: not made).
        samples_per_second: throughput of the trial at ``batch_size`` (None where no time was measured).
        trials: every trial step, in the order run.
        plan_seconds: wall time of planning.
        device_name: the device planned on (cache key).
        backend: "cuda", "simulated" or "cpu-estimator+simulated".
        train: False for forward-only (inference) planning.
        cache_key: the planning cache key it is stored under ("" when not cached).
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
    estimated_peak_bytes: float | None = None
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
        return sorted({t.batch_size for t in self.trials if fits_budget(t, self.budget_bytes)}, reverse=True)

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
    def from_dict(cls, data: dict[str, Any]) -> BatchSearchResult:
        """Rebuild a result from ``to_dict`` output."""
        trials = [StepMeasurement(**t) for t in data["trials"]]
        return cls(**{**data, "trials": trials})


def fits_budget(trial: StepMeasurement, budget_bytes: int) -> bool:
    """True when the trial ran (its first step too, under the cap) and its steady state is within ``budget_bytes``."""
    return trial.peak_bytes is not None and trial.peak_bytes <= budget_bytes


def largest_fitting(trials: Sequence[StepMeasurement], budget_bytes: int) -> int:
    """Return the largest batch size a trial showed to fit (0: none)."""
    return max((t.batch_size for t in trials if fits_budget(t, budget_bytes)), default=0)


def smallest_failing(trials: Sequence[StepMeasurement], budget_bytes: int, max_batch_size: int) -> int:
    """Return the smallest batch size a trial showed not to fit (``max_batch_size + 1``: none)."""
    return min((t.batch_size for t in trials if not fits_budget(t, budget_bytes)), default=max_batch_size + 1)


def predicted_size(trials: Sequence[StepMeasurement], budget_bytes: int, max_batch_size: int) -> int | None:
    """Return the next size the fitted line predicts between what fitted and what failed, None when it predicts none."""
    fit = _fit_measured(trials)
    good, bad = largest_fitting(trials, budget_bytes), smallest_failing(trials, budget_bytes, max_batch_size)
    if fit is None or bad - good <= 1:
        return None
    # a flat or falling line (noise at tiny sizes) predicts nothing: grow geometrically instead
    predicted = fit.largest_batch_size(budget_bytes) if fit.per_sample_bytes > 0 else 2 * good
    candidate = min(predicted, bad - 1)
    return candidate if candidate > good else None


def search_batch_size(
    step_cost: StepCost,
    precision: str,
    budget_bytes: int,
    fit_sizes: Sequence[int] = (1, 2, 4),
    max_batch_size: int = 1024,
    refits: int = 2,
) -> BatchSearchResult:
    """Return the largest batch size whose trial fits in ``budget_bytes``, found by fit, verify and bisection.

    Args:
        step_cost: runs one trial at a batch size for ``precision`` (``medseg.planning.step.StepCost``).
        precision: Lightning precision string, recorded in the result.
        budget_bytes: memory a step's steady state may use; a trial above it counts as failed even without an OOM.
        fit_sizes: small sizes measured first to fit the line (stops at the first that fails).
        max_batch_size: never plan above this (also the ceiling after an OOM recovery).
        refits: how many times a verified prediction is refitted and pushed further (when the line
            underestimated, the first prediction leaves memory unused).
    """
    if max_batch_size < 1:
        raise MedsegError(f"max batch size must be at least 1, got {max_batch_size}")
    start = time.perf_counter()
    trials: list[StepMeasurement] = []
    for size in sorted(s for s in fit_sizes if s <= max_batch_size):
        trials.append(step_cost(size))
        if not fits_budget(trials[-1], budget_bytes):
            break
    for _ in range(refits + 1):
        candidate = predicted_size(trials, budget_bytes, max_batch_size)
        if candidate is None:
            break
        trials.append(step_cost(candidate))
        if not fits_budget(trials[-1], budget_bytes):
            break
    while (bad := smallest_failing(trials, budget_bytes, max_batch_size)) - (good := largest_fitting(trials, budget_bytes)) > 1 and bad <= max_batch_size:
        trials.append(step_cost((good + bad) // 2))
    good = largest_fitting(trials, budget_bytes)
    if good == 0:
        raise MedsegError(
            f"{precision}: batch size 1 does not fit in the memory budget of {budget_bytes / 2**20:.0f} MiB:"
            " use a smaller patch size or model, or a larger budget fraction"
        )

    fit = _fit_measured(trials) or MemoryFit(float(trials[0].peak_bytes or 0), 0.0)
    chosen = [t for t in trials if t.batch_size == good and fits_budget(t, budget_bytes)][-1]
    result = BatchSearchResult(
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
        precision, good, result.measured_peak_bytes / 2**20, budget_bytes / 2**20,
        fit.fixed_bytes / 2**20, fit.per_sample_bytes / 2**20, len(trials),
    )
    return result


def _fit_measured(trials: Sequence[StepMeasurement]) -> MemoryFit | None:
    """Return the line through every measured peak (over budget too: still true data), None below two sizes."""
    measured = [t for t in trials if t.fits]
    return fit_memory(measured) if len({t.batch_size for t in measured}) > 1 else None
