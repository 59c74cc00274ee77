"""Fake-tensor step cost: a training step's memory for a GPU that is not here."""

import pytest

from medseg.model.networks import network_for
from medseg.planning.batch_search import fit_memory
from medseg.planning.fake_tensor import fake_step, fake_tensor_step_cost
from medseg.recipe import Recipe

RECIPE = Recipe("UNet", {"channels": [8, 16, 32], "strides": [2, 2], "num_res_units": 1}, ("CT",), ("b", "o", "l"), (32, 32, 16))


def test_a_fake_step_counts_weights_gradients_adamw_state_and_the_batch() -> None:
    weight_bytes = sum(p.numel() * 4 for p in network_for(RECIPE).parameters())
    batch_bytes = 2 * 32 * 32 * 16 * 4  # float32 image + float32 label, as the data module delivers them
    assert fake_step(RECIPE, 1, "32-true").peak_bytes > 4 * weight_bytes + batch_bytes  # activations on top


@pytest.mark.parametrize("mixed", ["16-mixed", "bf16-mixed"])
def test_mixed_precision_needs_clearly_less_memory_per_sample_than_fp32(mixed) -> None:
    fp32 = fit_memory([fake_tensor_step_cost(RECIPE, "32-true")(b) for b in (1, 2)])
    half = fit_memory([fake_tensor_step_cost(RECIPE, mixed)(b) for b in (1, 2)])
    assert half.per_sample_bytes < 0.8 * fp32.per_sample_bytes  # 0.76 for this UNet (backward temporaries stay fp32)
    assert fp32.per_sample_bytes > 0 and fp32.fixed_bytes > 0


def test_fake_step_costs_are_remembered_per_recipe_batch_and_precision() -> None:
    cost = fake_tensor_step_cost(RECIPE, "32-true")
    assert cost(2) is cost(2) and cost(2) is not fake_tensor_step_cost(RECIPE, "16-mixed")(2)
