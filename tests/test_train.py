"""End-to-end training through the real CLI: tiny UNet, 32x32x16 patches, a few steps."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from medseg import precision as precision_module
from medseg import train
from medseg.inference import InferenceOptions
from medseg.training.module import SegmentationModule, rng_states, set_rng_states
from tests.helpers.cli import REPO, tiny_train_args

@pytest.fixture(scope="module")
def trained(demo_root, tmp_path_factory):
    return train.run(tiny_train_args(demo_root, tmp_path_factory.mktemp("run")))


def test_fit_writes_best_and_last_checkpoints_config_and_logs(trained):
    assert trained.best_checkpoint.is_file() and trained.last_checkpoint.name == "last.ckpt"
    assert (trained.log_dir / "config.yaml").is_file() and (trained.log_dir / "metrics.csv").is_file()
    assert set(trained.metrics) >= {"val_dice_organ", "val_dice_lesion", "val_mean_dice"}
    assert 0.0 <= trained.metrics["val_mean_dice"] <= 1.0


def test_checkpoint_loads_weights_only_and_reproduces_predictions(trained, demo_root):
    checkpoint = torch.load(trained.best_checkpoint, map_location="cpu", weights_only=True)
    info = checkpoint["medseg"]
    assert info["class_names"] == ["background", "organ", "lesion"] and info["patch_size"] == [32, 32, 16]
    assert info["preprocessing"]["normalization"] == "ct"
    reloaded = SegmentationModule(**checkpoint["hyper_parameters"])
    reloaded.load_state_dict(checkpoint["state_dict"])
    reloaded.eval()
    trained.model.eval()
    image = torch.rand(1, 1, 40, 36, 20)
    with torch.no_grad():
        torch.testing.assert_close(reloaded.predict_logits(image), trained.model.predict_logits(image), rtol=0, atol=0)


def test_checkpoint_recipe_records_the_precision_that_ran_and_the_window_settings(trained):
    recipe = torch.load(trained.best_checkpoint, map_location="cpu", weights_only=True)["medseg"]
    assert recipe["precision"] == precision_module.resolve_precision("16-mixed", "cpu")[0]
    assert recipe["window"] == {"overlap": 0.25, "gaussian": True, "batch_size": 4}


def test_inference_runs_the_windows_and_precision_validation_ran(trained):
    from medseg.inference import Predictor, load_trained_model

    predictor = Predictor(load_trained_model(trained.best_checkpoint), InferenceOptions(device="cpu"))
    assert predictor.recipe.window == trained.model.recipe.window and predictor.precision == trained.model.recipe.precision
    image = torch.rand(1, 1, 40, 36, 20, generator=torch.Generator().manual_seed(0))
    trained.model.eval()
    with torch.no_grad(), precision_module.autocast(trained.model.recipe.precision, "cpu"):
        validated = torch.softmax(trained.model.predict_logits(image).float(), dim=1)[0]
    inferred, _ = predictor.probabilities(image)
    torch.testing.assert_close(inferred, validated, rtol=1e-5, atol=1e-6)


def test_run_that_ends_before_any_validation_validates_the_last_weights(demo_root, tmp_path):
    args = tiny_train_args(demo_root, tmp_path) + ["--trainer.max_epochs=1", "--trainer.check_val_every_n_epoch=5"]
    result = subprocess.run([sys.executable, "-m", "medseg.train", *args], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "Validation Dice of the last weights (no validation ran during training" in result.stdout
    assert "Best checkpoint: none" in result.stdout and "last.ckpt" in result.stdout


def test_resolved_config_is_saved_and_reusable(trained):
    text = (trained.log_dir / "config.yaml").read_text()
    assert "patch_size:\n  - 32\n  - 32\n  - 16" in text and "iterations_per_epoch: 3" in text


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medseg.train", *args], capture_output=True, text=True, cwd=REPO, timeout=120)


def test_print_config_shows_overrides_without_training():
    result = _cli("--config", "configs/demo.yaml", "--data.batch_size=7", "--trainer.max_epochs=3", "--print_config")
    assert result.returncode == 0, result.stderr
    assert "batch_size: 7" in result.stdout and "max_epochs: 3" in result.stdout
    assert "Epoch" not in result.stdout + result.stderr


@pytest.mark.parametrize("config", sorted(p.name for p in (REPO / "configs").glob("*.yaml")))
def test_shipped_configs_parse(config):
    result = _cli("--config", f"configs/{config}", "--print_config")
    assert result.returncode == 0, result.stderr


def test_demo_config_matches_built_in_defaults():
    assert _cli("--config", "configs/demo.yaml", "--print_config").stdout == _cli("--print_config").stdout


def test_bad_config_value_is_one_line_error():
    result = _cli("--data.batch_size=abc")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "data.batch_size" in result.stderr


def test_missing_dataset_is_one_line_error(tmp_path):
    result = _cli(f"--data.root={tmp_path / 'nowhere'}")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == f"medseg: error: {tmp_path / 'nowhere'}: dataset folder does not exist"
    assert "Traceback" not in result.stderr


def test_corrupt_scan_is_one_line_error_naming_the_file(demo_root, tmp_path):
    import shutil

    root = shutil.copytree(demo_root, tmp_path / "data")
    scan = root / "imagesTr" / "phantom_002.nii.gz"
    scan.write_bytes(scan.read_bytes()[:1000])
    result = _cli(*tiny_train_args(root, tmp_path / "runs"))
    assert result.returncode == 1
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith(f"medseg: error: {scan}: cannot read as NIfTI") and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "requested, device_type, native_bf16, expected",
    [
        ("16-mixed", "cpu", True, "bf16-mixed"),
        ("16-mixed", "cpu", False, "32-true"),
        ("bf16-mixed", "cpu", False, "bf16-mixed"),
        ("32-true", "cpu", True, "32-true"),
        ("16-mixed", "cuda", False, "16-mixed"),
    ],
)
def test_precision_resolution(monkeypatch, requested, device_type, native_bf16, expected):
    monkeypatch.setattr(precision_module, "cpu_has_native_bf16", lambda: native_bf16)
    precision, reason = precision_module.resolve_precision(requested, device_type)
    assert precision == expected and expected in reason


def test_random_states_round_trip_through_a_weights_only_checkpoint(tmp_path):
    import random

    import numpy as np


    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    torch.save({"rng_states": rng_states()}, tmp_path / "state.ckpt")
    expected = torch.rand(3), np.random.rand(3), random.random()
    torch.manual_seed(9), np.random.seed(9), random.seed(9)
    set_rng_states(torch.load(tmp_path / "state.ckpt", weights_only=True)["rng_states"])
    assert torch.equal(torch.rand(3), expected[0]) and np.array_equal(np.random.rand(3), expected[1]) and random.random() == expected[2]


def test_deterministic_training_turns_cudnn_autotuning_off(demo_root, tmp_path):
    from medseg.training.cli import build_cli

    assert build_cli(tiny_train_args(demo_root, tmp_path)).config.trainer.benchmark is True  # the default: patches have one shape
    assert build_cli(tiny_train_args(demo_root, tmp_path) + ["--trainer.deterministic=true"]).config.trainer.benchmark is False
