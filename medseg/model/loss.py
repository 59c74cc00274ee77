"""The training loss, shared by the Lightning module and the memory planner's trial steps."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from monai.losses import DeepSupervisionLoss, DiceCELoss

__all__ = ["deep_supervision_weights", "segmentation_loss"]

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def deep_supervision_weights(outputs: int) -> list[float]:
    """Return nnU-Net's weights of ``outputs`` deep-supervision outputs, the top one first: 1/2^i, normalised to sum 1.

    nnU-Net gives every decoder stage a head and weights the lowest one 0; a DynUNet has no head there at all
    (``deep_supr_num`` is at most the decoder stages but one), so the remaining weights are the same."""
    weights = [0.5**level for level in range(outputs)]
    return [weight / sum(weights) for weight in weights]


def segmentation_loss(network_kwargs: Mapping[str, Any] | None = None, dice_ce: Loss | None = None) -> Loss:
    """Return Dice + cross-entropy on softmax logits against (B, 1, ...) class-index labels; for a network with deep
    supervision (``network_kwargs["deep_supervision"]``), MONAI's ``DeepSupervisionLoss`` around it with nnU-Net's
    weights, which takes the network's list of outputs and brings the label to each one's size (nearest-exact).

    ``dice_ce`` replaces MONAI's ``DiceCELoss`` (the fake-tensor estimate's footprint of it)."""
    loss = dice_ce or DiceCELoss(to_onehot_y=True, softmax=True)
    kwargs = network_kwargs or {}
    if not kwargs.get("deep_supervision"):
        return loss
    return DeepSupervisionLoss(loss, weights=deep_supervision_weights(int(kwargs.get("deep_supr_num", 1)) + 1))
