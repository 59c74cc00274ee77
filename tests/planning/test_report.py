"""The precision comparison report shows the steady state the batch is planned on, and the first step's autotuning peak beside it."""

from __future__ import annotations

import json

import pytest

from medseg.planning.batch_search import search_batch_size
from medseg.planning.report import comparison, format_table, save_report
from medseg.testing import Autotuning, SimulatedDevice
from tests.helpers.stand_ins import MiB, linear_curve


def _plans():
    autotuning = Autotuning(driver_free_bytes=141 * 1024 * MiB)
    fp32 = SimulatedDevice(1000 * MiB, linear_curve(300 * MiB, 40 * MiB), name="gpu", autotuning=autotuning)
    mixed = SimulatedDevice(1000 * MiB, linear_curve(200 * MiB, 24 * MiB), name="gpu", autotuning=autotuning)
    return [search_batch_size(fp32.step_cost("32-true"), "32-true", 900 * MiB), search_batch_size(mixed.step_cost("16-mixed"), "16-mixed", 900 * MiB)]


def test_each_precision_shows_its_steady_state_line_batch_and_first_step_peak_against_fp32() -> None:
    fp32, mixed = comparison(_plans())
    assert (fp32["batch_size"], mixed["batch_size"]) == (15, 29)
    assert mixed["per_sample_ratio_to_fp32"] == pytest.approx(24 / 40) and mixed["budget_used"] == pytest.approx((200 + 24 * 29) / 900)
    assert fp32["measured_peak_mib"] == 900 < fp32["first_step_peak_mib"] <= 1000
    table = format_table(_plans())
    assert "steady peak MiB" in table and "first-step peak MiB" in table and "per-sample vs fp32" in table


def test_the_report_files_hold_every_trial_s_two_peaks(tmp_path) -> None:
    json_path, png_path = save_report(_plans(), tmp_path)
    trials = json.loads(json_path.read_text())["batch_searches"][0]["trials"]
    assert all(t["first_step_peak_bytes"] > t["peak_bytes"] for t in trials)  # every trial autotuned a new size
    assert png_path.stat().st_size > 10_000
