"""Fake-tensor step cost: a training step's memory for a GPU that is not here."""

import re

import pytest
import torch

from medseg.errors import MedsegError
from medseg.model.networks import network_for
from medseg.planning import fake_tensor
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


def test_a_step_this_torch_cannot_fake_is_one_line_naming_the_torch_version_and_the_way_out(monkeypatch) -> None:
    # fake tensors are private torch API: another torch may fail inside the step (13 planning tests did on an H200 with torch 2.11)
    def unsupported(logits, label):
        raise RuntimeError("aten::scatter_ has no fake implementation\n(the rest of torch's message)")

    monkeypatch.setattr(fake_tensor, "dice_ce_footprint", unsupported)
    with pytest.raises(MedsegError) as caught:
        fake_step(RECIPE, 2, "16-mixed")
    assert isinstance(caught.value.__cause__, RuntimeError)
    assert re.fullmatch(
        rf"the fake-tensor memory estimate failed at 16-mixed, batch 2, patch \[32, 32, 16\] under torch {re.escape(torch.__version__)} "
        r"\(RuntimeError: aten::scatter_ has no fake implementation\): install the tested torch==2\.13\.0, or on a CUDA GPU leave "
        r"--capacity_gib out to measure real steps instead",
        str(caught.value),
    )


def test_a_bad_network_in_the_recipe_keeps_its_own_one_line_error() -> None:
    bad = Recipe("UNet", {"channels": [16], "strides": [], "num_res_units": 1}, ("CT",), ("b", "o"), (16, 16, 16))
    with pytest.raises(MedsegError, match=r"^bad arguments for network UNet"):
        fake_step(bad, 1, "16-mixed")


def _dynunet(deep_supervision: bool) -> Recipe:
    from medseg.planning import rules

    patch, kwargs, _ = rules.dynunet_for_patch((32, 32, 16), (1.0, 1.0, 2.0), residual=False)
    kwargs.update(filters=[4, 8, 16, 32], deep_supervision=deep_supervision)
    return Recipe("DynUNet", kwargs, ("CT",), ("b", "o", "l"), tuple(patch))


def test_a_fake_step_of_a_deep_supervised_network_counts_its_heads_as_training_runs_them() -> None:
    assert fake_step(_dynunet(True), 2, "32-true").peak_bytes > fake_step(_dynunet(False), 2, "32-true").peak_bytes


def test_a_fake_step_counts_the_recipes_optimizer_state_sgds_momentum_below_adamws_two_moments() -> None:
    from medseg.recipe import NNUNET_OPTIMIZER

    weight_bytes = sum(p.numel() * 4 for p in network_for(RECIPE).parameters())
    adamw, sgd = fake_step(RECIPE, 1, "32-true"), fake_step(RECIPE.with_changes(optimizer=NNUNET_OPTIMIZER), 1, "32-true")
    assert adamw.peak_bytes - sgd.peak_bytes == pytest.approx(weight_bytes, rel=0.05)
