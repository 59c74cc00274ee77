"""Network factory: builds a MONAI 3D segmentation network by name."""

from __future__ import annotations

from typing import Any

import torch
from monai.networks import nets
from torch import nn

from medseg.errors import MedsegError
from medseg.recipe import Recipe

__all__ = ["DEFAULT_NETWORK_KWARGS", "NETWORKS", "DeepSupervisedDynUNet", "build_network", "network_for", "network_kwargs_or_default"]


class DeepSupervisedDynUNet(nets.DynUNet):
    """MONAI's DynUNet, whose deep-supervision heads in training come at their own resolution, as nnU-Net's do.

    MONAI's DynUNet upsamples every head to the full patch and stacks them: C channels at full resolution per head,
    kept for backward. Here training gets a list, the top output first, then the heads from the highest resolution
    down, and MONAI's ``DeepSupervisionLoss`` brings the label to each head's size (nearest-exact). In eval mode
    (validation, inference, export) the network returns the top output only, as DynUNet does.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        out = self.output_block(self.skip_layers(x))
        if self.training and self.deep_supervision:
            return [out, *self.heads]
        return out


NETWORKS = {"UNet": nets.UNet, "DynUNet": DeepSupervisedDynUNet, "SegResNet": nets.SegResNet}
DEFAULT_NETWORK_KWARGS: dict[str, Any] = {"channels": [16, 32, 64, 128], "strides": [2, 2, 2], "num_res_units": 1}


def network_kwargs_or_default(network: str, network_kwargs: dict[str, Any] | None) -> dict[str, Any]:
    """Return ``network_kwargs``, or for a UNet given none, ``DEFAULT_NETWORK_KWARGS``."""
    return dict(DEFAULT_NETWORK_KWARGS if network_kwargs is None and network == "UNet" else network_kwargs or {})


def build_network(name: str, in_channels: int, out_channels: int, **kwargs: Any) -> nn.Module:
    """Return the MONAI network `name` for 3D inputs with the given channel counts.

    Args:
        name: one of ``NETWORKS`` ("UNet", "DynUNet", "SegResNet").
        in_channels: image channels (modalities).
        out_channels: classes including background; the network outputs logits.
        kwargs: the MONAI class's own arguments (e.g. ``channels``, ``strides`` for UNet).
    """
    if name not in NETWORKS:
        raise MedsegError(f"unknown network {name!r}: choose one of {', '.join(NETWORKS)}")
    try:
        return NETWORKS[name](spatial_dims=3, in_channels=in_channels, out_channels=out_channels, **kwargs)
    except (TypeError, ValueError, AssertionError) as err:
        raise MedsegError(f"bad arguments for network {name} {kwargs}: {err}") from None


def network_for(recipe: Recipe) -> nn.Module:
    """Return a freshly initialised network of the recipe's kind, arguments, channels and classes."""
    return build_network(recipe.network, recipe.in_channels, recipe.out_channels, **recipe.network_kwargs)
