import math

import pytest

from medseg.data.fingerprint import DatasetFingerprint
from medseg.data.transforms import Preprocessing
from medseg.errors import MedsegError
from medseg.planning.fake_tensor import fake_tensor_step_cost
from medseg.planning.dataset_plan import make_plan

GiB = 2**30


@pytest.mark.parametrize("capacity_gib", [8, 24, 80])
@pytest.mark.parametrize("dataset", ["demo", "mri", "ct"])
def test_plan_fits_the_budget_within_the_median_shape_with_a_batch_of_at_least_two(fingerprints, dataset, capacity_gib):
    plan = make_plan(fingerprints[dataset], capacity_gib * GiB, fake_tensor_step_cost, "fake", precisions=("16-mixed",))
    [chosen] = plan.precisions
    assert chosen.peak_bytes <= chosen.budget_bytes == int(0.9 * capacity_gib * GiB)
    assert chosen.batch_size >= 2
    assert all(size <= median + 1 for size, median in zip(chosen.patch_size, plan.median_shape))


def test_anisotropic_mri_keeps_its_slices_thick_and_is_zscored_per_case(fingerprints):
    plan = make_plan(fingerprints["mri"], 8 * GiB, fake_tensor_step_cost, "fake", precisions=("16-mixed",))
    assert plan.spacing[:2] == [0.9, 0.9] and plan.spacing[2] >= 5.0
    assert plan.normalization == {"normalization": "zscore"} and len(plan.channel_names) == 4
    assert plan.precisions[0].network_kwargs["strides"][-1][2] == 1  # the thin axis stops pooling first


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
