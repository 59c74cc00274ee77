"""Planning on the steady state: cuDNN's first-step autotuning takes what memory is free, so the batch is planned on
the steps after it, and the first step only has to fit under the cap (benchmarks/results/memory/memory_cuda_spleen.md)."""

from __future__ import annotations

import pytest

from medseg.planning.batch_search import search_batch_size
from medseg.testing import Autotuning, SimulatedDevice
from tests.helpers.stand_ins import MiB, linear_curve

CAPACITY = 1000 * MiB  # an 8 GiB cap on an H200, scaled down: the driver reports the whole GPU free
H200 = Autotuning(driver_free_bytes=141 * 1024 * MiB)
STEADY = linear_curve(300 * MiB, 40 * MiB)  # budget 900 MiB: 15 samples at steady state


def capped_gpu(autotuning: Autotuning = H200) -> SimulatedDevice:
    """A new process on the capped GPU: nothing autotuned yet."""
    return SimulatedDevice(CAPACITY, STEADY, name="capped GPU", autotuning=autotuning)


def trains(batch_size: int, steps: int, autotuning: Autotuning = H200) -> bool:
    """Return whether ``steps`` training steps at ``batch_size`` in a new process run without running out of memory."""
    gpu = capped_gpu(autotuning)
    try:
        for _ in range(steps):
            gpu.check(batch_size)
    except RuntimeError:
        return False
    return True


def test_the_first_step_at_a_new_batch_size_takes_the_free_memory_halved_until_it_fits() -> None:
    gpu = capped_gpu()
    first, later = gpu.check(4), gpu.check(4)
    assert later == STEADY(4)
    assert (CAPACITY + STEADY(4)) / 2 < first <= CAPACITY  # more than half of what was free: one halving less would not fit


def test_the_planner_chooses_the_steady_state_batch_not_the_one_autotuning_inflates() -> None:
    plan = search_batch_size(capped_gpu().step_cost("32-true"), "32-true", budget_bytes=900 * MiB)
    assert plan.batch_size == 15
    assert plan.measured_peak_bytes == STEADY(15) == 900 * MiB
    assert plan.per_sample_bytes == pytest.approx(40 * MiB) and plan.fixed_bytes == pytest.approx(300 * MiB)
    assert plan.measured_peak_bytes < plan.first_step_peak_bytes <= CAPACITY  # both kept: the report shows them side by side


def test_training_200_steps_at_the_planned_batch_never_runs_out_of_memory() -> None:
    plan = search_batch_size(capped_gpu().step_cost("32-true"), "32-true", budget_bytes=900 * MiB)
    assert trains(plan.batch_size, 200)


def test_a_batch_whose_autotuning_finds_no_workspace_under_the_cap_is_not_planned() -> None:
    # an engine needs 150 MiB of workspace: at 15 the 100 MiB left under the cap are too few for the first step
    autotuning = Autotuning(driver_free_bytes=141 * 1024 * MiB, min_workspace_bytes=150 * MiB)
    plan = search_batch_size(capped_gpu(autotuning).step_cost("32-true"), "32-true", budget_bytes=900 * MiB)
    assert not trains(15, 1, autotuning)
    assert plan.batch_size == max(b for b in range(1, 16) if trains(b, 1, autotuning))
    assert trains(plan.batch_size, 200, autotuning)
