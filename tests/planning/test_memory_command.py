"""`python -m medseg.memory`, the precision comparison: table, JSON and plot from a real fake-tensor run of the command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from medseg.planning.memory_command import main, run
from tests.helpers.cli import run_main
from tests.helpers.stand_ins import TINY_UNET


def test_memory_command_writes_the_comparison_table_json_and_plot(tmp_path: Path, capsys) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(f"model:\n  network: UNet\n  network_kwargs: {json.dumps(TINY_UNET)}\ndata:\n  patch_size: [16, 16, 16]\n")
    plans = run(["--config", str(config), "--precisions", "32-true", "16-mixed", "--capacity_gib", "0.25", "--output", str(tmp_path / "out")])
    report = json.loads((tmp_path / "out" / "memory_report.json").read_text())
    fp32, fp16 = report["comparison"]
    assert (fp32["precision"], fp16["precision"]) == ("32-true", "16-mixed")
    assert fp16["per_sample_ratio_to_fp32"] < 0.95  # 0.93: this tiny UNet's backward temporaries stay fp32
    assert fp16["batch_size"] > fp32["batch_size"] == plans[0].batch_size
    assert (tmp_path / "out" / "memory_report.png").stat().st_size > 10_000
    table = capsys.readouterr().out
    assert "per-sample vs fp32" in table and "16-mixed" in table


def test_memory_command_names_a_missing_config_in_one_line(tmp_path: Path, capsys) -> None:
    code, _, error = run_main(main, ["--config", str(tmp_path / "nope.yaml")], capsys)
    assert code == 2 and "\n" not in error.strip()  # as the training command refuses it: a bad option
    assert error.startswith("medseg: error:") and f"{tmp_path / 'nope.yaml'}" in error and "does not exist" in error


def test_memory_command_takes_the_training_options_and_the_dataset_classes(demo_root: Path, tmp_path: Path, monkeypatch) -> None:
    seen = {}
    monkeypatch.setattr("medseg.planning.precision_comparison.estimated_batch_searches", lambda recipe, *args: seen.setdefault("recipe", recipe) and [])
    monkeypatch.setattr("medseg.planning.report.format_table", lambda plans: "")
    monkeypatch.setattr("medseg.planning.report.save_report", lambda plans, out: (out, out))
    run([f"--data.root={demo_root}", "--data.patch_size=[32, 32, 16]", f"--model.network_kwargs={json.dumps(TINY_UNET)}", "--capacity_gib", "80",
         "--output", str(tmp_path)])
    recipe = seen["recipe"]
    assert recipe.class_names == ("background", "organ", "lesion") and recipe.channel_names == ("CT",)
    assert recipe.patch_size == (32, 32, 16) and recipe.network_kwargs == TINY_UNET


def test_memory_command_plans_for_the_capacity_given_on_a_gpu_machine_too(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # with --capacity_gib the GPU at hand is not measured
    monkeypatch.setattr("medseg.planning.precision_comparison.measured_batch_searches", lambda *args: pytest.fail("measured this machine's GPU"))
    config = tmp_path / "config.yaml"
    config.write_text(f"model:\n  network: UNet\n  network_kwargs: {json.dumps(TINY_UNET)}\ndata:\n  patch_size: [16, 16, 16]\n")
    [plan] = run(["--config", str(config), "--trainer.accelerator=cpu", "--precisions", "32-true", "--capacity_gib", "0.25", "--output", str(tmp_path / "out")])
    assert plan.backend == "fake-tensor estimate" and plan.device_name == "simulated GPU 0.25 GiB"
