"""The planner: fitting memory curves, predicting, verifying, backing off, and caching plans."""

from __future__ import annotations

import math

import pytest

from medseg.errors import MedsegError
from medseg.planning.step import StepMeasurement
from medseg.planning.batch_search import BatchSearchResult, MemoryFit, fit_memory, search_batch_size
from medseg.planning.cache import PlanningCache, cache_key
from medseg.planning.on_device import batch_search_key
from medseg.testing import SimulatedDevice
from tests.helpers.stand_ins import MiB, linear_curve


def test_fit_recovers_fixed_and_per_sample_memory_of_a_line() -> None:
    curve = linear_curve(300 * MiB, 40 * MiB)
    fit = fit_memory([StepMeasurement(b, "32-true", int(curve(b))) for b in (1, 2, 4)])
    assert fit.fixed_bytes == pytest.approx(300 * MiB)
    assert fit.per_sample_bytes == pytest.approx(40 * MiB)


def test_fit_ignores_sizes_that_ran_out_of_memory() -> None:
    measurements = [StepMeasurement(1, "32-true", 110), StepMeasurement(2, "32-true", 120), StepMeasurement(4, "32-true", None)]
    assert fit_memory(measurements) == MemoryFit(fixed_bytes=100.0, per_sample_bytes=10.0)


def test_fit_predicts_the_largest_batch_under_a_budget() -> None:
    fit = MemoryFit(fixed_bytes=300 * MiB, per_sample_bytes=40 * MiB)
    assert fit.largest_batch_size(1000 * MiB) == 17  # 300 + 17 * 40 = 980 <= 1000 < 1020
    assert fit.largest_batch_size(200 * MiB) == 0


def test_plan_on_a_linear_curve_takes_the_predicted_size_after_verifying_it() -> None:
    device = SimulatedDevice(1000 * MiB, linear_curve(300 * MiB, 40 * MiB))
    plan = search_batch_size(device.step_cost("32-true"), "32-true", budget_bytes=1000 * MiB)
    assert plan.batch_size == 17
    assert [t.batch_size for t in plan.trials] == [1, 2, 4, 17]
    assert plan.measured_peak_bytes == 980 * MiB
    assert plan.per_sample_bytes == pytest.approx(40 * MiB)


def test_plan_backs_off_by_bisection_when_the_fit_predicts_a_size_that_does_not_fit() -> None:
    # above 10 samples a second workspace appears: the line through 1, 2, 4 predicts 17, which fails
    line = linear_curve(300 * MiB, 40 * MiB)
    device = SimulatedDevice(1000 * MiB, lambda b: line(b) + (300 * MiB if b > 10 else 0))
    plan = search_batch_size(device.step_cost("32-true"), "32-true", budget_bytes=1000 * MiB)
    failed = {t.batch_size for t in plan.trials if not t.fits}
    assert 17 in failed
    assert plan.batch_size == 10  # 11 would need 300 + 440 + 300 MiB


def test_plan_never_returns_a_size_it_did_not_verify() -> None:
    line = linear_curve(300 * MiB, 40 * MiB)
    for jump_above in (5, 9, 16):
        device = SimulatedDevice(1000 * MiB, lambda b, j=jump_above: line(b) + (400 * MiB if b > j else 0))
        plan = search_batch_size(device.step_cost("16-mixed"), "16-mixed", budget_bytes=1000 * MiB)
        assert plan.batch_size in plan.verified_batch_sizes
        assert plan.batch_size == max(b for b in range(1, 40) if device.peak_bytes(b) <= 1000 * MiB)


def test_plan_counts_a_step_over_the_budget_as_failed_even_without_oom() -> None:
    device = SimulatedDevice(2000 * MiB, linear_curve(300 * MiB, 40 * MiB))
    plan = search_batch_size(device.step_cost("32-true"), "32-true", budget_bytes=900 * MiB)
    assert plan.batch_size == 15
    assert plan.measured_peak_bytes <= 900 * MiB


def test_plan_refits_when_the_line_underestimates_and_uses_most_of_the_budget() -> None:
    # memory grows slower than linearly (e.g. shared workspace): the first prediction leaves memory unused
    device = SimulatedDevice(4000 * MiB, lambda b: 300 * MiB + 200 * MiB * math.sqrt(b) * 3)
    plan = search_batch_size(device.step_cost("32-true"), "32-true", budget_bytes=4000 * MiB)
    largest = max(b for b in range(1, 1025) if device.peak_bytes(b) <= 4000 * MiB)
    # the line through 1 and 2 predicts 16; refits on the measured peaks reach 31 (38 is the largest that fits)
    assert 0.85 * 4000 * MiB <= plan.measured_peak_bytes <= 4000 * MiB and 16 < plan.batch_size <= largest


def test_plan_respects_the_maximum_batch_size() -> None:
    device = SimulatedDevice(1000 * MiB, linear_curve(300 * MiB, 1 * MiB))
    assert search_batch_size(device.step_cost("32-true"), "32-true", 1000 * MiB, max_batch_size=12).batch_size == 12


def test_plan_fails_with_one_line_when_batch_size_one_does_not_fit() -> None:
    device = SimulatedDevice(200 * MiB, linear_curve(300 * MiB, 40 * MiB))
    with pytest.raises(MedsegError, match="batch size 1 does not fit"):
        search_batch_size(device.step_cost("32-true"), "32-true", budget_bytes=200 * MiB)


def test_cached_plan_comes_back_for_the_same_key_only(tmp_path) -> None:
    device = SimulatedDevice(1000 * MiB, linear_curve(300 * MiB, 40 * MiB))
    plan = search_batch_size(device.step_cost("32-true"), "32-true", budget_bytes=1000 * MiB)
    cache = PlanningCache(tmp_path / "plans.json")
    config = {"network": "UNet", "network_kwargs": {"channels": [4, 8]}}
    cache.put(cache_key({"config": config, "patch_size": [16, 16, 16], "precision": "32-true"}), plan.to_dict())
    assert BatchSearchResult.from_dict(cache.get(cache_key({"precision": "32-true", "patch_size": [16, 16, 16], "config": config}))) == plan
    assert cache.get(cache_key({"config": config, "patch_size": [16, 16, 16], "precision": "16-mixed"})) is None
    assert cache.get(cache_key({"config": config, "patch_size": [32, 16, 16], "precision": "32-true"})) is None


def test_a_damaged_plan_cache_is_a_one_line_error(tmp_path) -> None:
    (tmp_path / "plans.json").write_text("{not json")
    with pytest.raises(MedsegError, match="plans.json is not valid JSON"):
        PlanningCache(tmp_path / "plans.json").get("any")


def test_plans_with_different_caps_do_not_share_a_cache_entry(tiny_setup) -> None:
    capped = batch_search_key(tiny_setup, "32-true", "gpu", 900 * MiB, train=True, max_batch_size=1024)
    assert capped != batch_search_key(tiny_setup, "32-true", "gpu", 900 * MiB, train=True, max_batch_size=65536)
