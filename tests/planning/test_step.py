"""Trial steps: nothing kept between trials, weights untouched, steady-state order; the CUDA trial and budget."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

import pytest
import torch

from medseg.planning.batch_search import plan_batch_size
from medseg.planning.budget import budget_bytes, usable_cuda_bytes
from medseg.planning.cuda_steps import measure_cuda_step
from medseg.planning.on_device import plan_on_device
from medseg.planning.simulated_device import SimulatedDevice
from medseg.planning.step import TrainingSetup, run_training_step
from tests.helpers.stand_ins import MiB, linear_curve


def live_tensor_bytes() -> int:
    """Bytes of the tensors Python holds (a tensor only autograd's C++ graph holds is not among gc's objects)."""
    gc.collect()
    return sum(o.untyped_storage().nbytes() for o in gc.get_objects() if type(o) in (torch.Tensor, torch.nn.Parameter))


@contextmanager
def module_outputs(net: torch.nn.Module) -> Iterator[list[weakref.ref]]:
    """Yield a list that gets a weak reference to every tensor the network's modules return: the activations."""
    outputs: list[weakref.ref] = []
    handles = [m.register_forward_hook(lambda _, __, out: outputs.append(weakref.ref(out))) for m in net.modules()]
    try:
        yield outputs
    finally:
        for handle in handles:
            handle.remove()


def alive(references: list[weakref.ref]) -> int:
    gc.collect()
    return sum(reference() is not None for reference in references)


def test_a_trial_that_runs_out_of_memory_mid_step_keeps_nothing(tiny_setup: TrainingSetup) -> None:
    device = SimulatedDevice(100 * MiB, linear_curve(10 * MiB, 20 * MiB))
    probe = device.step_cost("32-true", tiny_setup)
    weights = {k: v.clone() for k, v in tiny_setup.net.state_dict().items()}
    probe(1)  # first step: lazily created buffers exist from here on
    before = live_tensor_bytes()
    with module_outputs(tiny_setup.net) as activations:
        assert not probe(8).fits  # the OOM is raised after the forward pass, with activations alive
    assert activations and alive(activations) == 0
    assert probe(2).fits
    assert live_tensor_bytes() == before
    assert all(p.grad is None for p in tiny_setup.net.parameters())
    assert all(torch.equal(v, weights[k]) for k, v in tiny_setup.net.state_dict().items())


def _watch_forward_passes(setup: TrainingSetup) -> tuple[TrainingSetup, list[tuple[bool, int]]]:
    """Return the setup with a recording optimizer, and a list that gets, at every forward pass,
    (all gradients alive, parameters with optimizer state)."""
    optimizers: list[torch.optim.Optimizer] = []
    seen: list[tuple[bool, int]] = []

    def make(parameters):
        optimizers.append(setup.make_optimizer(parameters))
        return optimizers[-1]

    def record(*_):
        seen.append((all(p.grad is not None for p in setup.net.parameters()), len(optimizers[-1].state)))

    setup.net.register_forward_hook(record)
    return replace(setup, make_optimizer=make), seen


def test_a_second_trial_step_runs_forward_beside_the_optimizer_state_and_previous_gradients(tiny_setup: TrainingSetup) -> None:
    setup, seen = _watch_forward_passes(tiny_setup)
    run_training_step(setup, 2, "32-true", steps=2)
    parameters = len(list(setup.net.parameters()))
    assert seen == [(False, 0), (True, parameters)]  # as in training from its second step on


def test_an_fp16_trial_counts_the_optimizer_state_even_when_training_scale_would_overflow(tiny_setup: TrainingSetup) -> None:
    # a loss whose gradients overflow at GradScaler's default scale 65536: training skips optimizer.step then
    setup, seen = _watch_forward_passes(replace(tiny_setup, loss_fn=lambda logits, label: tiny_setup.loss_fn(logits, label) * 1e5))
    run_training_step(setup, 1, "16-mixed", steps=2)
    assert seen[-1][1] == len(list(setup.net.parameters()))


def test_planning_with_real_steps_finds_the_size_the_capacity_allows(tiny_setup: TrainingSetup) -> None:
    device = SimulatedDevice(100 * MiB, linear_curve(10 * MiB, 20 * MiB))
    plan = plan_batch_size(device.step_cost("32-true", tiny_setup), "32-true", budget_bytes=100 * MiB)
    assert plan.batch_size == 4
    assert tiny_setup.net.training


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


@pytest.mark.parametrize(("process_fraction", "expected_gib"), [(1.0, 0.9 * 60), (0.25, 0.9 * 20)])
def test_budget_is_the_free_memory_within_the_process_memory_cap(monkeypatch, process_fraction, expected_gib) -> None:
    # an 80 GiB GPU with 50 GiB free and 10 GiB in torch's cache; a cap of 0.25 allows this process 20 GiB in all
    GiB = 2**30
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (50 * GiB, 80 * GiB))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 10 * GiB)
    monkeypatch.setattr(torch.cuda, "get_per_process_memory_fraction", lambda device=None: process_fraction)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # release_memory: nothing to empty here
    assert budget_bytes(usable_cuda_bytes(torch.device("cuda")), 0.9) == int(expected_gib * GiB)


@pytest.mark.cuda
def test_cuda_planning_stays_within_a_process_memory_cap(tiny_setup: TrainingSetup) -> None:
    tiny_setup.net.cuda()
    _, total = torch.cuda.mem_get_info()
    cap = (torch.cuda.memory_reserved() + 1024 * MiB) / total
    torch.cuda.set_per_process_memory_fraction(cap)
    try:
        plan = plan_on_device(tiny_setup, "16-mixed", budget_fraction=0.9, max_batch_size=4096)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    assert plan.budget_bytes <= 0.9 * cap * total
    assert 0 < plan.measured_peak_bytes <= plan.budget_bytes
    assert plan.batch_size < 4096  # the cap, not the ceiling, stopped it


@pytest.mark.cuda
def test_planning_on_cuda_returns_a_measured_size_within_the_budget(tiny_setup: TrainingSetup) -> None:
    tiny_setup.net.cuda()
    plan = plan_on_device(tiny_setup, "16-mixed", budget_fraction=0.05, max_batch_size=256)
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
