import math

import numpy as np
import pytest

from medseg.data.fingerprint import DatasetFingerprint
from medseg.data.transforms import Preprocessing
from medseg.errors import MedsegError
from medseg.planning.fake_tensor import fake_tensor_step_cost
from medseg.planning import rules
from medseg.planning.dataset_plan import make_plan
from medseg.planning.step import StepMeasurement
from tests.helpers.stand_ins import MiB

GiB = 2**30


@pytest.mark.parametrize("capacity_gib", [8, 24, 80])
@pytest.mark.parametrize("dataset", ["demo", "mri", "ct"])
def test_plan_fits_the_budget_within_the_median_shape_with_a_batch_of_at_least_two(fingerprints, dataset, capacity_gib):
    plan = make_plan(fingerprints[dataset], capacity_gib * GiB, fake_tensor_step_cost, "fake", precisions=("16-mixed",))
    [chosen] = plan.precisions
    assert chosen.peak_bytes <= chosen.budget_bytes == int(0.9 * capacity_gib * GiB)
    assert chosen.batch_size >= 2
    divisors = np.prod(chosen.network_kwargs["strides"], axis=0)  # nnU-Net pads the median shape up to what the network divides
    assert all(size < median + divisor for size, median, divisor in zip(chosen.patch_size, plan.median_shape, divisors))


def test_anisotropic_mri_keeps_its_slices_thick_and_is_zscored_per_case(fingerprints):
    plan = make_plan(fingerprints["mri"], 8 * GiB, fake_tensor_step_cost, "fake", precisions=("16-mixed",))
    assert plan.spacing[:2] == [0.9, 0.9] and plan.spacing[2] >= 5.0
    assert plan.normalization == {"normalization": "zscore"} and len(plan.channel_names) == 4
    kwargs = plan.precisions[0].network_kwargs  # the thick-slice axis is convolved and pooled in-plane first (nnU-Net)
    assert kwargs["strides"][1][2] == 1 and kwargs["kernel_size"][0][2] == 1


def test_ct_is_clipped_to_foreground_percentiles_and_zscored(fingerprints):
    plan = make_plan(fingerprints["ct"], 8 * GiB, fake_tensor_step_cost, "fake", precisions=("16-mixed",))
    # every foreground voxel is 120 HU: both percentiles and the mean are 120 (the window widened to stay a window), the std is floored
    assert plan.normalization == {"normalization": "ct_zscore", "ct_window": [119.0, 121.0], "ct_mean": 120.0, "ct_std": 0.001}
    Preprocessing(**plan.normalization)  # training accepts it


def test_mixed_precision_gets_at_least_the_patch_of_fp32_under_a_tight_budget(fingerprints):
    plan = make_plan(fingerprints["ct"], 1 * GiB, fake_tensor_step_cost, "fake", precisions=("32-true", "16-mixed"))
    fp32, mixed = plan.precisions
    assert math.prod(mixed.patch_size) >= math.prod(fp32.patch_size) and len(fp32.candidates) > 1


def test_a_single_case_fails_the_plan_in_one_line(fingerprints):
    single = DatasetFingerprint("one-case", ("CT",), ("background", "organ"), fingerprints["ct"].cases[:1])
    with pytest.raises(MedsegError, match=r"^one-case: planning needs at least 2 cases .* has 1$"):
        make_plan(single, 8 * GiB, fake_tensor_step_cost, "fake")


def test_all_background_labels_fail_the_plan_in_one_line(fingerprints):
    from dataclasses import replace

    empty = replace(fingerprints["demo"], cases=tuple(replace(c, class_voxels=(sum(c.class_voxels), 0, 0)) for c in fingerprints["demo"].cases))
    with pytest.raises(MedsegError, match=r"every label is background \(no voxel of organ, lesion\)"):
        make_plan(empty, 8 * GiB, fake_tensor_step_cost, "fake")


def test_the_batch_is_the_largest_whose_step_fits_when_memory_grows_faster_than_the_line_of_the_first_sizes(fingerprints, monkeypatch):
    monkeypatch.setattr(rules, "MAX_DATASET_SHARE", 1e6)  # memory alone decides
    # peak = 100 MiB + 10 MiB x b + 1 MiB x b^2: the line through batches 1 and 2 predicts 30 for a 500 MiB budget,
    # whose step peaks at 1300 MiB; 15 is the largest that fits (475 MiB, 16: 516 MiB)
    peaks = lambda b: (100 + 10 * b + b * b) * MiB
    step_costs = lambda recipe, precision: lambda b: StepMeasurement(b, precision, peaks(b))
    plan = make_plan(fingerprints["demo"], int(500 * MiB / 0.9) + 1, step_costs, "quadratic", precisions=("16-mixed",))
    chosen = plan.chosen
    assert chosen.batch_size == 15 and chosen.peak_bytes == peaks(15) <= chosen.budget_bytes
    assert chosen.batch_reason == "the largest batch the memory budget holds (verified)"


def test_the_batch_stops_at_five_percent_of_the_dataset_when_memory_holds_more(fingerprints):
    step_costs = lambda recipe, precision: lambda b: StepMeasurement(b, precision, (100 + b) * MiB)
    plan = make_plan(fingerprints["demo"], 80 * GiB, step_costs, "linear", precisions=("16-mixed",))
    chosen = plan.chosen
    assert chosen.batch_size == rules.dataset_batch_limit(chosen.patch_size, plan.dataset_voxels)
    assert chosen.batch_reason == "at most 5% of the dataset's voxels per step"
