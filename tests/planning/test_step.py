"""Trial steps: nothing kept between trials, weights untouched, Lightning's order of a steady-state step."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

import torch

from medseg.planning.batch_search import search_batch_size
from medseg.testing import SimulatedDevice
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
    plan = search_batch_size(device.step_cost("32-true", tiny_setup), "32-true", budget_bytes=100 * MiB)
    assert plan.batch_size == 4
    assert tiny_setup.net.training
