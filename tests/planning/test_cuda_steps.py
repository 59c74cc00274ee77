"""Real CUDA trials: steady-state peaks after a warm-up step, memory freed after an OOM, planning within a cap."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from medseg.planning.cuda_steps import measure_cuda_step
from medseg.planning.fake_tensor import fake_step
from medseg.planning.on_device import search_on_device
from medseg.planning.step import TrainingSetup, training_setup
from medseg.recipe import Recipe
from tests.helpers.stand_ins import MiB


@pytest.mark.cuda
def test_cuda_trial_measures_growing_peaks_and_frees_memory_after_oom(tiny_setup: TrainingSetup) -> None:
    tiny_setup.net.cuda()
    small, large = measure_cuda_step(tiny_setup, 1, "16-mixed"), measure_cuda_step(tiny_setup, 8, "16-mixed")
    assert 0 < small.peak_bytes < large.peak_bytes
    baseline = torch.cuda.memory_allocated()  # after the first steps: library workspaces may stay allocated
    free, _ = torch.cuda.mem_get_info()
    huge = measure_cuda_step(tiny_setup, 4 * free // (16**3 * 4), "32-true")
    assert not huge.fits
    assert torch.cuda.memory_allocated() == baseline


@pytest.mark.cuda
def test_cuda_planning_stays_within_a_process_memory_cap(tiny_setup: TrainingSetup) -> None:
    tiny_setup.net.cuda()
    _, total = torch.cuda.mem_get_info()
    cap = (torch.cuda.memory_reserved() + 1024 * MiB) / total
    torch.cuda.set_per_process_memory_fraction(cap)
    try:
        plan = search_on_device(tiny_setup, "16-mixed", budget_fraction=0.9, max_batch_size=4096)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    assert plan.budget_bytes <= 0.9 * cap * total
    assert 0 < plan.measured_peak_bytes <= plan.budget_bytes
    assert plan.batch_size < 4096  # the cap, not the ceiling, stopped it


@pytest.mark.cuda
def test_planning_on_cuda_returns_a_measured_size_within_the_budget(tiny_setup: TrainingSetup) -> None:
    tiny_setup.net.cuda()
    plan = search_on_device(tiny_setup, "16-mixed", budget_fraction=0.05, max_batch_size=256)
    assert plan.backend == "cuda" and plan.batch_size in plan.verified_batch_sizes
    assert plan.measured_peak_bytes <= plan.budget_bytes
    assert plan.samples_per_second is not None and plan.samples_per_second > 0


class FirstStepWorkspace(torch.nn.Module):
    """A network whose first forward pass holds a large temporary, as cuDNN autotuning's trial workspaces do."""

    def __init__(self, network: torch.nn.Module, workspace_bytes: int) -> None:
        super().__init__()
        self.network, self.workspace_bytes, self.called = network, workspace_bytes, False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.called:
            self.called = True
            torch.ones(self.workspace_bytes, dtype=torch.uint8, device=x.device)  # freed at once
        return self.network(x)


@pytest.mark.cuda
def test_cuda_trial_plans_on_the_steady_state_and_keeps_the_first_steps_autotuning_peak_beside_it(tiny_setup: TrainingSetup) -> None:
    # cuDNN's autotuning workspace takes what is free in the first step only: planned on it, fp32 trained at 31 % of its budget
    tiny_setup.net.cuda()
    tuned = replace(tiny_setup, net=FirstStepWorkspace(tiny_setup.net, 512 * MiB))
    trial = measure_cuda_step(tuned, 4, "32-true")
    assert trial.first_step_peak_bytes > 512 * MiB > trial.peak_bytes


@pytest.mark.cuda
@pytest.mark.parametrize("precision", ["32-true", "16-mixed"])
def test_the_fake_tensor_estimate_lies_within_ten_percent_of_the_measured_steady_state(precision: str) -> None:
    # what planning without a GPU (--capacity_gib, medseg.plan) relies on: issue 19's target for the estimator
    recipe = Recipe("UNet", {"channels": [16, 32, 64, 128], "strides": [2, 2, 2], "num_res_units": 1}, ("CT",), ("b", "o", "l"), (64, 64, 32))
    setup = training_setup(recipe)
    setup.net.cuda()
    measured = measure_cuda_step(setup, 2, precision, steps=2).peak_bytes
    estimated = fake_step(recipe, 2, precision).peak_bytes
    assert abs(estimated - measured) <= 0.10 * measured, (estimated / MiB, measured / MiB)
