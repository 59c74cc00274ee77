"""Shared fixtures: tiny checkpoints written the way the training module writes them, and phantom scans."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch

from medseg.data.transforms import Preprocessing
from medseg.recipe import Recipe
from medseg.model.networks import build_network

TINY_UNET = {"channels": [8, 16], "strides": [2], "num_res_units": 0}
POINTWISE_UNET = {"channels": [8, 16], "strides": [1], "num_res_units": 0, "kernel_size": 1, "up_kernel_size": 1, "norm": None}
PATCH = [16, 16, 16]
SPACING_MM = 1.5
# Hounsfield units of air, soft tissue, class 1 and class 2; the CT window (-200, 300) maps them to 0, .2, .6, .9.
AIR_HU, TISSUE_HU, CLASS1_HU, CLASS2_HU = -1000, -100, 100, 250
NORMALISED = {0: 0.2, 1: 0.6, 2: 0.9}


def phantom_labels(shape: tuple[int, int, int] = (40, 36, 32)) -> np.ndarray:
    """Return the known segmentation: two separate boxes (labels 1 and 2) in a body, in voxel order."""
    labels = np.zeros(shape, np.uint8)
    labels[8:20, 6:22, 5:18] = 1
    labels[22:34, 14:30, 12:26] = 2
    return labels


def phantom_hu(labels: np.ndarray) -> np.ndarray:
    """Return CT intensities for `labels`, with a 3-voxel border of air the foreground crop removes."""
    hu = np.choose(labels, [TISSUE_HU, CLASS1_HU, CLASS2_HU]).astype(np.float32)
    hu[:3], hu[-3:], hu[:, :3], hu[:, -3:] = AIR_HU, AIR_HU, AIR_HU, AIR_HU
    return hu


def medseg_meta(network_kwargs: dict | None = None, preprocessing: Preprocessing | None = None, in_channels: int = 1, **recipe: Any) -> dict:
    """Return a checkpoint's ``medseg`` record as training writes it (a recipe as plain data)."""
    prep = preprocessing or Preprocessing(spacing=(SPACING_MM,) * 3, normalization="ct")
    channels = tuple(f"CT{i}" for i in range(in_channels))
    return Recipe("UNet", network_kwargs or TINY_UNET, channels, ("background", "box", "slab"), tuple(PATCH), prep, **recipe).to_dict()


def save_checkpoint(path: Path, network: torch.nn.Module, meta: dict) -> Path:
    torch.save({"state_dict": {f"net.{k}": v for k, v in network.state_dict().items()}, "medseg": meta}, path)
    return path


def _training_batch(generator: torch.Generator, size: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    """Return voxels of random classes (and some air) in normalised intensities, as the network sees them."""
    labels = torch.randint(0, 3, (2, size, size, size), generator=generator)
    image = torch.tensor([NORMALISED[label] for label in range(3)])[labels]
    air = torch.rand(labels.shape, generator=generator) < 0.15
    image[air], labels[air] = 0.0, 0
    return image[:, None], labels


@pytest.fixture(scope="session")
def trained_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny UNet trained in seconds to segment the phantom by intensity: it gets the known segmentation right.

    Point-wise kernels and no normalisation make the task exactly learnable in 30 steps, so any
    mismatch in the tests is the pipeline's (orientation, resampling, inversion), not the model's.
    """
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    network = build_network("UNet", 1, 3, **POINTWISE_UNET)
    optimizer = torch.optim.Adam(network.parameters(), lr=0.05)
    for _ in range(30):
        image, labels = _training_batch(generator)
        loss = torch.nn.functional.cross_entropy(network(image), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return save_checkpoint(tmp_path_factory.mktemp("model") / "trained.ckpt", network.eval(), medseg_meta(POINTWISE_UNET))


@pytest.fixture(scope="session")
def random_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained tiny UNet: enough where only geometry or errors matter."""
    torch.manual_seed(1)
    return save_checkpoint(tmp_path_factory.mktemp("model") / "random.ckpt", build_network("UNet", 1, 3, **TINY_UNET), medseg_meta())


def save_scan(path: Path, data: np.ndarray, affine: np.ndarray, qform_code: int = 1, sform_code: int = 1) -> Path:
    image = nib.Nifti1Image(data, affine)
    image.set_qform(affine, code=qform_code)
    image.set_sform(affine, code=sform_code)
    nib.save(image, path)
    return path
