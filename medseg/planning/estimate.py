"""What one training step of a candidate costs: real steps on a CUDA GPU, fake-tensor steps for a GPU not at hand."""

from __future__ import annotations

from collections.abc import Callable
import json

from medseg.memory.fake import fake_step
from medseg.memory.measure import StepMeasurement, measure_cuda_step, training_setup
from medseg.model.networks import network_for
from medseg.recipe import Recipe

StepCost = Callable[[Recipe, int, str], StepMeasurement]  # (candidate, batch size, precision) -> peak bytes and seconds


_estimates: dict[str, StepMeasurement] = {}


def estimated_step(recipe: Recipe, batch_size: int, precision: str) -> StepMeasurement:
    """Return the fake-tensor peak of a step (no time: nothing ran); remembered, so plans for several budgets share them."""
    key = json.dumps([recipe.network, recipe.network_kwargs, recipe.in_channels, recipe.out_channels, recipe.patch_size, batch_size, precision])
    if key not in _estimates:
        _estimates[key] = fake_step(recipe, batch_size, precision)
    return _estimates[key]


def measured_step(recipe: Recipe, batch_size: int, precision: str) -> StepMeasurement:
    """Return the measured steady-state peak and time of real steps on the current CUDA GPU (peak None when out of memory)."""
    setup = training_setup(recipe, network_for(recipe).cuda())
    return measure_cuda_step(setup, batch_size, precision)

