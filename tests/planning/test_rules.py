import numpy as np
import pytest

from medseg.data.fingerprint import CaseFingerprint, ChannelIntensity, DatasetFingerprint
from medseg.planning import rules


def _dataset(spacings, channel="MRI"):
    cases = tuple(CaseFingerprint(f"c{i}", tuple(s), (100, 100, 30), (ChannelIntensity(1, 0.0, 0.0, (0.0,)),), (10, 5)) for i, s in enumerate(spacings))
    return DatasetFingerprint("root", (channel,), ("background", "x"), cases)


def test_target_spacing_is_the_median_of_near_isotropic_data():
    spacing, _ = rules.target_spacing(_dataset([(1.0, 1.0, 1.0), (1.2, 1.2, 2.0), (0.8, 0.8, 1.5)]))
    assert spacing == (1.0, 1.0, 1.5)


def test_coarse_axis_more_than_three_times_the_others_takes_its_tenth_percentile():
    slices = [4.0, 5.0, 5.0, 6.0, 7.0]
    spacing, reason = rules.target_spacing(_dataset([(1.0, 1.0, z) for z in slices]))
    assert spacing[2] == pytest.approx(np.percentile(slices, 10), abs=1e-4) and "10th percentile" in reason


def test_unet_brings_every_axis_to_four_to_seven_voxels_at_the_bottleneck():
    patch, kwargs = rules.unet_for_patch([160, 128, 28])
    strides = np.prod(np.array(kwargs["strides"]), axis=0)
    assert patch == [160, 128, 28] and (np.array(patch) // strides).tolist() == [5, 4, 7]
    assert len(kwargs["channels"]) == len(kwargs["strides"]) + 1 and max(kwargs["channels"]) <= 320


def test_batch_covers_at_most_five_percent_of_the_dataset_but_at_least_two():
    assert rules.dataset_batch_limit([10, 10, 10], dataset_voxels=200_000) == 10
    assert rules.dataset_batch_limit([10, 10, 10], dataset_voxels=1_000) == 2


def test_throughput_knee_is_the_last_doubling_that_added_ten_percent():
    assert rules.throughput_knee({2: 10.0, 4: 15.0, 8: 16.0, 16: 16.5}) == 4
    assert rules.throughput_knee({2: 10.0, 4: 20.0}) == 4
