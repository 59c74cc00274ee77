import json
import shutil
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

from medseg.io import nifti
from medseg.data.formats import read_dataset
from medseg.planning.fake_tensor import fake_tensor_step_cost
from medseg.planning.store import config_yaml, plan_dataset, plan_for_training, training_config
from medseg.testing import SimulatedDevice, SimulatedOOMCallback
from medseg.training.cli import build_cli, with_plan
from tests.helpers.cli import REPO

GiB = 2**30


def test_second_plan_of_an_unchanged_dataset_is_cached_and_reads_no_voxels(demo_root, tmp_path, monkeypatch):
    spec = read_dataset(demo_root)
    first = plan_dataset(spec, tmp_path, 8 * GiB, fake_tensor_step_cost, "fake", precisions=("16-mixed",), show_progress=False)
    monkeypatch.setattr(nifti, "read_voxels", lambda path: (_ for _ in ()).throw(AssertionError(f"read {path}")))
    second = plan_dataset(spec, tmp_path, 8 * GiB, fake_tensor_step_cost, "fake", precisions=("16-mixed",), show_progress=False)
    assert not first.cached and second.cached and second.plan == first.plan


@pytest.mark.parametrize("dataset", ["demo_root", "mri_root"])
def test_training_without_a_config_uses_the_plan_and_one_epoch_fits_the_simulated_gpu(dataset, request, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a GPU machine would plan for its own GPU
    root = shutil.copytree(request.getfixturevalue(dataset), tmp_path / "dataset")
    # the tutorial UNet (train's --network tutorial): a step of the default, full-resolution network at the planned
    # patch takes minutes on a 2-core CPU
    args = with_plan(["--data.root", str(root), "--data.cache_dir", str(tmp_path / "cache")], network="tutorial")
    assert args[0] == "--config" and args[1].endswith(".yaml")
    assert "network: UNet" in Path(args[1]).read_text()
    cli = build_cli([*args, "--data.iterations_per_epoch=1", "--data.num_workers=0", "--data.cache=none", "--trainer.accelerator=cpu"])
    [record] = json.loads((tmp_path / "cache" / "plans" / "plans.json").read_text()).values()  # the one plan cache
    assert list(cli.datamodule.patch_size) == cli.model.hparams.patch_size
    chosen = [p for p in record["precisions"] if p["precision"] == "16-mixed"][0]
    assert list(cli.datamodule.patch_size) == chosen["patch_size"] and cli.datamodule.batch_size == chosen["batch_size"]
    device = SimulatedDevice(8 * GiB, lambda b: chosen["fixed_bytes"] + chosen["per_sample_bytes"] * b)
    trainer = L.Trainer(
        accelerator="cpu", max_epochs=1, limit_val_batches=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[SimulatedOOMCallback(device)], default_root_dir=tmp_path,
    )
    trainer.fit(cli.model, cli.datamodule)
    assert trainer.global_step == 1


def test_training_on_the_cpu_plans_the_tutorial_unet_unless_a_network_is_asked_for(demo_root, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    args = ["--data.root", str(demo_root), "--data.cache_dir", str(tmp_path / "cache")]
    with caplog.at_level("INFO", logger="medseg"):
        assert "network: UNet" in Path(with_plan(args)[1]).read_text()
    assert "training on the CPU: planning the tutorial network" in caplog.text
    assert "network: DynUNet" in Path(with_plan(args, network="plain")[1]).read_text()


def test_a_patch_size_given_by_hand_plans_nothing(demo_root):
    args = ["--data.root", str(demo_root), "--data.patch_size=[32, 32, 16]"]
    assert with_plan(args) == args


@pytest.mark.parametrize("chosen", [["--config", "c.yaml"], ["--data.patch_size=[32, 32, 16]"]])
def test_a_network_asked_for_where_nothing_is_planned_is_refused_in_one_line(demo_root, chosen, capsys):
    from medseg.training import command

    assert command.main(["--data.root", str(demo_root), *chosen, "--network", "tutorial"]) == 1
    assert capsys.readouterr().err.strip().endswith(
        "--network chooses the plan of a dataset given by --data.root without --config or --data.patch_size: leave it out,"
        " or plan with python -m medseg.plan and train with its plan.yaml")


def test_a_capacity_given_is_planned_for_with_the_estimate_on_a_gpu_machine_too(demo_root, tmp_path, monkeypatch):
    # planning for another GPU than the one at hand: the GPU here must not be measured (nothing below may touch it)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    stored = plan_for_training(read_dataset(demo_root), tmp_path, capacity_gib=24, precisions=("16-mixed",), show_progress=False)
    assert stored.plan.capacity_bytes == 24 * GiB and stored.plan.memory_source == "fake-tensor estimate"


def test_the_planned_config_reads_back_as_the_plan_with_its_reasons_as_comments(demo_root, tmp_path):
    # a folder name YAML would misread if written by hand: a comment mark and a key separator
    root = shutil.copytree(demo_root, tmp_path / "data #1: ct")
    stored = plan_dataset(read_dataset(root), tmp_path, 8 * GiB, fake_tensor_step_cost, "fake", precisions=("16-mixed",), show_progress=False)
    text = stored.config_path.read_text()
    config = yaml.safe_load(text)
    assert config == training_config(stored.plan) and config["data"]["root"] == str(root)
    assert config["data"]["patch_size"] == stored.plan.chosen.patch_size and config["trainer"]["precision"] == "16-mixed"
    assert f"# data.spacing: {stored.plan.spacing_reason}" in text and text == config_yaml(stored.plan)


def test_a_preset_plans_the_residual_encoder_for_its_gpu_size_and_reports_nnunets_figures_beside_its_estimate(demo_root, tmp_path):
    from medseg.errors import MedsegError
    from medseg.planning.report import format_plan

    stored = plan_for_training(read_dataset(demo_root), tmp_path, preset="L", precisions=("16-mixed",), show_progress=False)
    plan = stored.plan
    assert plan.capacity_bytes == 24 * GiB and plan.chosen.budget_bytes == int(0.9 * 24 * GiB)
    assert (plan.network, plan.preset, plan.chosen.network) == ("resenc", "L", "DynUNet") and plan.chosen.network_kwargs["res_block"]
    assert "preset L: nnU-Net targets 24 GB (measured 22.7 GB on an A100); medseg plans " in format_plan(plan)
    with pytest.raises(MedsegError, match="give --preset or --capacity_gib, not both"):
        plan_for_training(read_dataset(demo_root), tmp_path, capacity_gib=8, preset="M")


def test_the_nnunet_class_plan_trains_with_nnunets_optimizer_and_augmentation_and_the_tutorial_unet_with_the_defaults(demo_root, tmp_path):
    spec = read_dataset(demo_root)
    plain = plan_dataset(spec, tmp_path, 8 * GiB, fake_tensor_step_cost, "fake", precisions=("16-mixed",), show_progress=False)
    config = training_config(plain.plan)
    assert config["model"]["network"] == "DynUNet" and config["model"]["network_kwargs"]["deep_supervision"]
    assert "nnU-Net's default network class" in plain.plan.network_reason
    shipped = yaml.safe_load((REPO / "configs" / "nnunet_like.yaml").read_text())  # the same recipe, by hand
    assert config["model"]["optimizer"] == shipped["model"]["optimizer"] and config["data"]["augmentation"] == shipped["data"]["augmentation"]
    tutorial = plan_dataset(spec, tmp_path, 8 * GiB, fake_tensor_step_cost, "fake", precisions=("16-mixed",), show_progress=False, network="tutorial")
    config = training_config(tutorial.plan)
    assert config["model"]["network"] == "UNet" and "optimizer" not in config["model"] and "augmentation" not in config["data"]


def test_the_shipped_nnunet_like_config_has_the_network_the_rules_give_for_the_default_patch_and_spacing():
    from medseg.data.sampling import DEFAULT_PATCH_SIZE
    from medseg.data.transforms import Preprocessing
    from medseg.planning import rules

    shipped = yaml.safe_load((REPO / "configs" / "nnunet_like.yaml").read_text())
    patch, kwargs, _ = rules.dynunet_for_patch(DEFAULT_PATCH_SIZE, Preprocessing().spacing, residual=False)
    assert list(patch) == list(DEFAULT_PATCH_SIZE) and shipped["model"]["network_kwargs"] == kwargs
