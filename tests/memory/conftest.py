"""Fixtures for memory tests: a real (tiny) MONAI UNet setup for trial steps."""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets import UNet

from medseg.memory.measure import TrainingSetup
from medseg.model.loss import segmentation_loss
from tests.helpers.stand_ins import PATCH, TINY_UNET


@pytest.fixture
def tiny_setup() -> TrainingSetup:
    """A real MONAI UNet, small enough for CPU trial steps."""
    torch.manual_seed(0)
    return TrainingSetup(
        net=UNet(3, 1, 2, **TINY_UNET),
        loss_fn=segmentation_loss(),
        make_optimizer=lambda params: torch.optim.AdamW(params, lr=1e-3),
        in_channels=1,
        out_channels=2,
        patch_size=PATCH,
    )
