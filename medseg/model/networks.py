"""Network factory: builds a MONAI 3D segmentation network by name."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from monai.networks import nets
from torch import nn

from medseg.errors import MedsegError
from medseg.recipe import Recipe

__all__ = ["DEFAULT_NETWORK_KWARGS", "NETWORKS", "DeepSupervisedDynUNet", "build_network", "network_for", "network_kwargs_or_default"]


class DeepSupervisedDynUNet(nets.DynUNet):
    """MONAI's DynUNet, whose deep-supervision heads in training come at their own resolution, as nnU-Net's do, and
    whose encoder stages may stack several blocks, as nnU-Net's residual encoder does.

    MONAI's DynUNet upsamples every head to the full patch and stacks them: C channels at full resolution per head,
    kept for backward. Here training gets a list, the top output first, then the heads from the highest resolution
    down, and MONAI's ``DeepSupervisionLoss`` brings the label to each head's size (nearest-exact). In eval mode
    (validation, inference, export) the network returns the top output only, as DynUNet does.

    ``blocks_per_stage`` (one count per encoder stage, the bottleneck last) stacks that many of DynUNet's blocks in a
    stage, the first with the stage's stride; nnU-Net's ResEnc UNets have 1, 3, 4, 6, 6, 6, ... Without it every stage
    has one block, and the network and its weights' names are DynUNet's.
    """

    def __init__(self, *args: Any, blocks_per_stage: Sequence[int] | None = None, **kwargs: Any) -> None:
        self.blocks_per_stage = blocks_per_stage  # read by DynUNet.__init__, through the get_* methods below
        super().__init__(*args, **kwargs)

    def stage(self, index: int, in_channels: int) -> nn.Module:
        """Return encoder stage ``index``: its blocks, the first taking ``in_channels`` at the stage's stride."""
        if self.blocks_per_stage is not None and len(self.blocks_per_stage) != len(self.strides):
            raise ValueError(f"blocks_per_stage has {len(self.blocks_per_stage)} counts for {len(self.strides)} stages")
        count = 1 if self.blocks_per_stage is None else self.blocks_per_stage[index]
        blocks = [
            self.conv_block(self.spatial_dims, in_channels if block == 0 else self.filters[index], self.filters[index], self.kernel_size[index],
                            self.strides[index] if block == 0 else 1, self.norm_name, self.act_name, dropout=self.dropout)
            for block in range(count)
        ]
        return blocks[0] if count == 1 else nn.Sequential(*blocks)

    def get_input_block(self) -> nn.Module:
        return self.stage(0, self.in_channels)

    def get_downsamples(self) -> nn.ModuleList:
        return nn.ModuleList(self.stage(index, self.filters[index - 1]) for index in range(1, len(self.strides) - 1))

    def get_bottleneck(self) -> nn.Module:
        return self.stage(len(self.strides) - 1, self.filters[-2])

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
