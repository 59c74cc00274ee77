"""The precision comparison report shows the steady state the batch is planned on, and the first step's autotuning peak
beside it; the plan's table and figure show what they have, with the columns the two share named alike."""

from __future__ import annotations

import json

import pytest

from medseg.option_values import COMPARED_PRECISIONS
from medseg.planning.batch_search import search_batch_size
from medseg.planning.command import parse_args as plan_args
from medseg.planning.dataset_plan import DatasetPlan, PrecisionConfig
from medseg.planning.memory_command import parse_args as memory_args
from medseg.planning.report import comparison, format_plan, format_table, plot_plan, save_report
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


def _dataset_plan(samples_per_second: dict[int, float]) -> DatasetPlan:
    configs = [
        PrecisionConfig(precision, [64, 64, 32], {"strides": [[1, 1, 1], [2, 2, 2]]}, batch, "budget", peak * MiB, 900 * MiB,
                        100 * MiB, 50 * MiB, samples_per_second)
        for precision, batch, peak in (("32-true", 2, 800), ("16-mixed", 4, 850))
    ]
    return DatasetPlan("data/demo", ["CT"], ["background", "organ"], [1.0, 1.0, 2.0], "median", [128, 128, 64], 1e7,
                       {"normalization": "ct_zscore"}, "CT", 1000 * MiB, 0.9, "fake-tensor estimate", configs)


def test_the_plan_figure_leaves_the_throughput_panel_out_when_no_step_was_timed() -> None:
    assert [a.get_title() for a in plot_plan(_dataset_plan({})).axes] == ["patch", "peak memory at the planned batch"]
    timed = plot_plan(_dataset_plan({2: 10.0, 4: 18.0})).axes
    assert len(timed) == 3 and timed[2].get_title() == "throughput" and len(timed[2].get_lines()) == 2


def test_plan_and_memory_name_and_round_the_columns_they_share_alike() -> None:
    plan_header = next(line for line in format_plan(_dataset_plan({2: 10.0, 4: 18.0})).splitlines() if line.startswith("precision")).split()
    memory_header = format_table(_plans()).splitlines()[1].split()
    shared = ["precision", "batch", "steady", "peak", "MiB", "budget", "MiB", "samples/s"]
    assert plan_header[:8] == memory_header[:8] == shared


def test_plan_and_memory_compare_the_same_precisions_by_default() -> None:
    assert plan_args([])[0].precisions == memory_args([])[0].precisions == list(COMPARED_PRECISIONS) == ["32-true", "16-mixed"]
