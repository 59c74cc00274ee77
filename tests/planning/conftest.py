"""Planning fixtures: a real (tiny) MONAI UNet setup for trial steps, and generated datasets: an anisotropic
4-channel MRI-like one and a large, mostly constant CT-like one."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from monai.networks.nets import UNet

from medseg.data.formats import read_dataset
from medseg.data.validation import validate_dataset
from medseg.model.loss import segmentation_loss
from medseg.planning.step import TrainingSetup
from medseg.testing import write_ct_like, write_mri_like
from tests.helpers.stand_ins import PATCH, TINY_UNET


@pytest.fixture(scope="session")
def mri_root(tmp_path_factory) -> Path:
    """Five MRI-like cases: 4 channels (4D files), 0.9 mm in-plane, 5 mm slices, a tumour and its core."""
    return write_mri_like(tmp_path_factory.mktemp("mri"))


@pytest.fixture(scope="session")
def ct_root(tmp_path_factory) -> Path:
    """Two CT-like cases of 420x400x210 voxels (0.8 x 0.8 x 1.5 mm), air and a box of tissue: a few MiB gzipped."""
    return write_ct_like(tmp_path_factory.mktemp("ct"))


@pytest.fixture(scope="session")
def fingerprints(demo_root, mri_root, ct_root):
    """Each dataset's fingerprint, by name."""
    roots = {"demo": demo_root, "mri": mri_root, "ct": ct_root}
    return {name: validate_dataset(read_dataset(root), show_progress=False) for name, root in roots.items()}


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
