"""Checkpoints load weights-only; anything unsafe, foreign or mismatched is refused in one line."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch

from medseg.errors import MedsegError
from medseg.inference import load_trained_model
from medseg.inference.command import main
from medseg.model.networks import build_network

from .conftest import TINY_UNET, medseg_meta, phantom_hu, phantom_labels, save_checkpoint, save_scan


def test_checkpoint_rebuilds_network_and_preprocessing_from_plain_data(random_checkpoint):
    model = load_trained_model(random_checkpoint)
    recipe = model.recipe
    assert recipe.class_names == ("background", "box", "slab") and recipe.in_channels == 1
    assert recipe.patch_size == (16, 16, 16) and recipe.preprocessing.spacing == (1.5, 1.5, 1.5)
    assert not model.network.training


def test_checkpoint_needing_unsafe_unpickling_is_refused(tmp_path):
    path = tmp_path / "pickled.ckpt"
    network = build_network("UNet", 1, 3, **TINY_UNET)
    torch.save({"state_dict": network.state_dict(), "medseg": medseg_meta(), "hparams": argparse.Namespace(lr=1)}, path)
    with pytest.raises(MedsegError, match="needs unsafe .* loading and is refused") as err:
        load_trained_model(path)
    assert "\n" not in str(err.value)


def test_checkpoint_from_a_different_model_gives_one_line_error(tmp_path, capsys):
    bigger = build_network("UNet", 1, 3, channels=[16, 32], strides=[2], num_res_units=0)
    path = save_checkpoint(tmp_path / "other.ckpt", bigger, medseg_meta(TINY_UNET))
    scan = save_scan(tmp_path / "scan.nii.gz", phantom_hu(phantom_labels()), np.eye(4))
    assert main(["--checkpoint", str(path), "--input", str(scan), "--output", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"medseg: error: checkpoint {path} weights do not fit its UNet network")
    assert "\n" not in err


def test_checkpoint_without_medseg_hyper_parameters_is_refused(tmp_path):
    path = tmp_path / "plain.ckpt"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(MedsegError, match="is not a medseg checkpoint"):
        load_trained_model(path)


def test_missing_checkpoint_is_named(tmp_path):
    with pytest.raises(MedsegError, match="missing.ckpt does not exist"):
        load_trained_model(tmp_path / "missing.ckpt")


def test_a_version_1_checkpoint_reads_as_fp32_with_default_windows(tmp_path):
    network = build_network("UNet", 1, 3, **TINY_UNET)
    version_1 = {"format_version": 1, "in_channels": 1, "out_channels": 3, **medseg_meta()}
    for key in ("version", "precision", "window"):
        del version_1[key]
    recipe = load_trained_model(save_checkpoint(tmp_path / "v1.ckpt", network, version_1)).recipe
    assert recipe.precision == "32-true" and (recipe.window.overlap, recipe.window.gaussian, recipe.window.batch_size) == (0.25, True, 4)


def test_a_checkpoint_from_a_newer_medseg_is_one_line_error(tmp_path):
    path = save_checkpoint(tmp_path / "v9.ckpt", build_network("UNet", 1, 3, **TINY_UNET), {**medseg_meta(), "version": 9})
    with pytest.raises(MedsegError, match=r"recipe version 9 is not one this medseg reads \(1 or 2\); upgrade medseg") as err:
        load_trained_model(path)
    assert "\n" not in str(err.value)
