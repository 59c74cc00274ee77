"""The precision comparison report: table, JSON and plot from a real CPU-estimator run of the command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medseg.errors import MedsegError
from medseg.memory.__main__ import run
from tests.memory.fakes import TINY_UNET


def test_memory_command_writes_the_comparison_table_json_and_plot(tmp_path: Path, capsys) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(f"model:\n  network: UNet\n  network_kwargs: {json.dumps(TINY_UNET)}\ndata:\n  patch_size: [16, 16, 16]\n")
    plans = run(["--config", str(config), "--precisions", "32-true", "16-mixed", "--capacity-gib", "0.25", "--out", str(tmp_path / "out")])
    report = json.loads((tmp_path / "out" / "memory_report.json").read_text())
    fp32, fp16 = report["comparison"]
    assert (fp32["precision"], fp16["precision"]) == ("32-true", "16-mixed")
    assert fp16["per_sample_ratio_to_fp32"] < 0.9
    assert fp16["batch_size"] > fp32["batch_size"] == plans[0].batch_size
    assert (tmp_path / "out" / "memory_report.png").stat().st_size > 10_000
    table = capsys.readouterr().out
    assert "per-sample vs fp32" in table and "16-mixed" in table


def test_memory_command_names_a_missing_config(tmp_path: Path) -> None:
    with pytest.raises(MedsegError, match="does not exist"):
        run(["--config", str(tmp_path / "nope.yaml")])
