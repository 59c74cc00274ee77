"""nnU-Net's recipe as a config, not a fork: configs/nnunet_like.yaml trains a deep-supervised DynUNet with SGD and
nnU-Net's augmentation, and its checkpoint segments with medseg.infer."""

from __future__ import annotations

import json

import nibabel as nib
import torch

from medseg.inference.command import main as infer
from medseg.recipe import NNUNET_OPTIMIZER
from medseg.training.cli import run as train
from tests.helpers.cli import REPO, tiny_train_args

# a tiny network of the config's class: 3 stages, the top output and one head
TINY_DYNUNET = {
    "kernel_size": [[3, 3, 3]] * 3, "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2]], "upsample_kernel_size": [[2, 2, 2]] * 2,
    "filters": [4, 8, 16], "res_block": True, "deep_supervision": True, "deep_supr_num": 1,
}


def test_the_nnunet_like_config_trains_with_deep_supervision_and_its_checkpoint_segments(demo_root, tmp_path):
    args = ["--config", str(REPO / "configs" / "nnunet_like.yaml"), *tiny_train_args(demo_root, tmp_path / "runs")]
    result = train([*args, f"--model.network_kwargs={json.dumps(TINY_DYNUNET)}", "--data.spacing=null"])
    checkpoint = torch.load(result.last_checkpoint, weights_only=True)
    recipe = checkpoint["medseg"]
    assert recipe["network"] == "DynUNet" and recipe["network_kwargs"]["deep_supervision"] is True
    assert recipe["optimizer"] == json.loads(json.dumps(NNUNET_OPTIMIZER.__dict__))
    assert checkpoint["optimizer_states"][0]["param_groups"][0]["nesterov"] is True
    assert "val_mean_dice" in result.metrics

    scan = sorted((demo_root / "imagesTr").iterdir())[0]
    assert infer(["--checkpoint", str(result.last_checkpoint), "--input", str(scan), "--output", str(tmp_path / "pred")]) == 0
    assert nib.load(tmp_path / "pred" / scan.name).shape == nib.load(scan).shape
