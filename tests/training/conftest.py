"""Fixtures for training tests: the training module with a tiny UNet, and a quiet CPU trainer."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import lightning as L
import pytest
import torch

from medseg.training.module import SegmentationModule
from tests.helpers.stand_ins import PATCH, TINY_UNET


@pytest.fixture
def tiny_module() -> SegmentationModule:
    torch.manual_seed(0)
    return SegmentationModule(network="UNet", network_kwargs=TINY_UNET, in_channels=1, out_channels=2, patch_size=PATCH)


@pytest.fixture
def make_trainer(tmp_path: Path) -> Callable[..., L.Trainer]:
    """Build a quiet CPU trainer writing into the test's folder."""

    def make(**kwargs) -> L.Trainer:
        settings = {
            "accelerator": "cpu", "devices": 1, "max_epochs": 1, "logger": False, "enable_progress_bar": False,
            "enable_model_summary": False, "limit_val_batches": 0, "default_root_dir": tmp_path, "num_sanity_val_steps": 0,
        }
        return L.Trainer(**{**settings, **kwargs})

    return make
