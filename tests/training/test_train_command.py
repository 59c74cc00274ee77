"""End-to-end training through the real CLI: tiny UNet, 32x32x16 patches, a few steps; its command-line errors."""

from __future__ import annotations

import shutil

import pytest
import torch

from medseg import precision as precision_module
from medseg.inference import InferenceOptions
from medseg.training.command import main
from medseg.training.module import SegmentationModule, rng_states, set_rng_states
from tests.helpers.cli import REPO, run_main, tiny_train_args

# How far inference's probabilities may lie from validation's: the same windows and weights, so equal up to the
# rounding of the precision they run at (bf16 keeps 8 bits of mantissa, fp16 11).
PROBABILITY_TOLERANCE = {"32-true": 1e-5, "16-mixed": 2e-3, "bf16-mixed": 1e-2}


def _device_type() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def test_fit_writes_best_and_last_checkpoints_config_and_logs(trained_run):
    assert trained_run.best_checkpoint.is_file() and trained_run.last_checkpoint.name == "last.ckpt"
    assert (trained_run.log_dir / "config.yaml").is_file() and (trained_run.log_dir / "metrics.csv").is_file()
    metrics = trained_run.metrics
    assert set(metrics) >= {"val_dice_organ", "val_dice_lesion", "val_mean_dice"}
    assert metrics["val_mean_dice"] == pytest.approx((metrics["val_dice_organ"] + metrics["val_dice_lesion"]) / 2, abs=1e-6)


def test_a_run_keeps_one_file_per_state_its_best_checkpoint_and_last_ckpt_of_the_final_epoch(trained_run):
    folder = trained_run.log_dir / "checkpoints"
    names = sorted(p.name for p in folder.iterdir())
    assert len(names) == 2 and names[0].startswith("best-") and names[1] == "last.ckpt"
    assert trained_run.last_checkpoint == folder / "last.ckpt"
    assert torch.load(folder / "last.ckpt", map_location="cpu", weights_only=True)["epoch"] == 1  # rewritten after epoch 1


def test_checkpoint_loads_weights_only_and_reproduces_predictions(trained_run):
    checkpoint = torch.load(trained_run.best_checkpoint, map_location="cpu", weights_only=True)
    info = checkpoint["medseg"]
    assert info["class_names"] == ["background", "organ", "lesion"] and info["patch_size"] == [32, 32, 16]
    assert info["preprocessing"]["normalization"] == "ct"
    reloaded = SegmentationModule(**checkpoint["hyper_parameters"])
    reloaded.load_state_dict(checkpoint["state_dict"])
    trained = trained_run.model.cpu()
    for model in (reloaded, trained):  # the layout inference runs at (Predictor), whatever layout training left
        model.eval().net.to(memory_format=torch.channels_last_3d)
    image = torch.rand(1, 1, 40, 36, 20)
    with torch.no_grad(), precision_module.autocast("32-true", "cpu"):
        # equal weights give equal logits up to the fp32 kernels' summation order, which oneDNN chooses per CPU
        # (AVX2-only CPUs differed by up to 6e-7): torch.testing's float32 tolerances (rtol 1.3e-6, atol 1e-5)
        torch.testing.assert_close(reloaded.predict_logits(image), trained.predict_logits(image), rtol=1.3e-6, atol=1e-5)


def test_checkpoint_recipe_records_the_precision_that_ran_and_the_window_settings(trained_run, cpu_bf16):
    recipe = torch.load(trained_run.best_checkpoint, map_location="cpu", weights_only=True)["medseg"]
    if torch.cuda.is_available():
        assert recipe["precision"] == "16-mixed"
    else:
        assert recipe["precision"] == ("bf16-mixed" if cpu_bf16 else "32-true")
        assert recipe["window"] == {"overlap": 0.25, "gaussian": True, "batch_size": 4}  # a GPU plans the window batch


def test_inference_runs_the_windows_and_precision_validation_ran(trained_run):
    from medseg.inference import Predictor, load_trained_model

    device_type = _device_type()
    model = trained_run.model.to(device_type).eval()
    predictor = Predictor(load_trained_model(trained_run.best_checkpoint), InferenceOptions(device=device_type))
    assert predictor.recipe.window == model.recipe.window and predictor.precision == model.recipe.precision
    image = torch.rand(1, 1, 40, 36, 20, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), precision_module.autocast(model.recipe.precision, device_type):
        validated = torch.softmax(model.predict_logits(image.to(device_type)).float(), dim=1)[0].cpu()
    inferred, _ = predictor.probabilities(image)
    tolerance = PROBABILITY_TOLERANCE[predictor.precision]
    torch.testing.assert_close(inferred.cpu(), validated, rtol=0, atol=tolerance)


def test_run_that_ends_before_any_validation_validates_the_last_weights(demo_root, tmp_path, capsys):
    args = tiny_train_args(demo_root, tmp_path) + ["--trainer.max_epochs=1", "--trainer.check_val_every_n_epoch=5"]
    code, out, err = run_main(main, args, capsys)
    assert code == 0, err[-2000:]
    assert "Validation Dice of the last weights (no validation ran during training" in out
    assert "Best checkpoint: none" in out and "last.ckpt" in out


def test_resolved_config_is_saved_and_reusable(trained_run, capsys):
    config = trained_run.log_dir / "config.yaml"
    assert "patch_size:\n  - 32\n  - 32\n  - 16" in config.read_text() and "iterations_per_epoch: 3" in config.read_text()
    code, out, err = run_main(main, ["--config", str(config), "--print_config"], capsys)
    assert code == 0, err
    assert "iterations_per_epoch: 3" in out and "max_epochs: 2" in out


def test_print_config_shows_overrides_without_training(capsys):
    code, out, err = run_main(main, ["--config", str(REPO / "configs" / "demo.yaml"), "--data.batch_size=7", "--trainer.max_epochs=3", "--print_config"], capsys)
    assert code == 0, err
    assert "batch_size: 7" in out and "max_epochs: 3" in out
    assert "Epoch" not in out + err


@pytest.mark.parametrize("config", sorted(p.name for p in (REPO / "configs").glob("*.yaml")))
def test_shipped_configs_parse(config, capsys):
    code, _, err = run_main(main, ["--config", str(REPO / "configs" / config), "--print_config"], capsys)
    assert code == 0, err


def test_demo_config_matches_built_in_defaults(capsys):
    code, from_file, _ = run_main(main, ["--config", str(REPO / "configs" / "demo.yaml"), "--print_config"], capsys)
    assert code == 0 and from_file == run_main(main, ["--print_config"], capsys)[1]


def test_bad_config_value_is_one_line_error(capsys):
    code, _, err = run_main(main, ["--data.batch_size=abc"], capsys)
    assert code == 2
    assert err.strip().count("\n") == 0 and "data.batch_size" in err


def test_missing_dataset_is_one_line_error(tmp_path, capsys):
    code, _, err = run_main(main, [f"--data.root={tmp_path / 'nowhere'}"], capsys)
    assert code == 1
    assert err.strip().splitlines()[-1] == f"medseg: error: {tmp_path / 'nowhere'}: dataset folder does not exist"
    assert "Traceback" not in err


def test_corrupt_scan_is_one_line_error_naming_the_file(demo_root, tmp_path, capsys):
    root = shutil.copytree(demo_root, tmp_path / "data")
    scan = root / "imagesTr" / "phantom_002.nii.gz"
    scan.write_bytes(scan.read_bytes()[:1000])
    code, _, err = run_main(main, tiny_train_args(root, tmp_path / "runs"), capsys)
    assert code == 1
    assert err.strip().splitlines()[-1].startswith(f"medseg: error: {scan}: cannot read as NIfTI") and "Traceback" not in err


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


def test_a_run_without_validation_batches_says_so_and_keeps_its_checkpoints(demo_root, tmp_path, capsys):
    args = tiny_train_args(demo_root, tmp_path) + ["--trainer.max_epochs=1", "--trainer.limit_val_batches=0"]
    code, out, err = run_main(main, args, capsys)
    assert code == 0, err[-2000:]
    assert "No per-epoch validation ran (no validation batches: --trainer.limit_val_batches 0?)" in out and "Best checkpoint: none" in out
    assert (tmp_path / "medseg" / "version_0" / "checkpoints" / "last.ckpt").is_file()
