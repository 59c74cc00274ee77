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


# nnU-Net v2's get_pool_and_conv_props(spacing, patch, 4, 999999), run on these inputs (network_topology.py)
NNUNET_TOPOLOGIES = [
    (
        (0.8, 0.8, 3.0), (192, 160, 40),
        [[1, 1, 1], [2, 2, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 1]],
        [[3, 3, 1], [3, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]],
        [192, 160, 40], [32, 32, 8],
    ),
    (
        (1.5, 1.5, 3.0), (100, 90, 45),
        [[1, 1, 1], [2, 2, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]],
        [[3, 3, 1], [3, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]],
        [112, 96, 48], [16, 16, 8],
    ),
]


@pytest.mark.parametrize("spacing, patch, strides, kernels, padded, divisors", NNUNET_TOPOLOGIES)
def test_strides_and_kernels_of_anisotropic_spacing_are_nnunets(spacing, patch, strides, kernels, padded, divisors):
    assert rules.pool_and_conv_props(spacing, patch) == (strides, kernels, padded, divisors)


def test_the_nnunet_class_network_keeps_its_first_stage_at_full_resolution_and_supervises_all_but_the_lowest_decoder_stage():
    patch, kwargs, _ = rules.dynunet_for_patch([100, 90, 45], [1.5, 1.5, 3.0], residual=False)
    assert kwargs["strides"][0] == [1, 1, 1] and kwargs["upsample_kernel_size"] == kwargs["strides"][1:]
    assert kwargs["filters"] == [32, 64, 128, 256, 320]
    # 5 stages, 4 decoder stages: the top output and 3 heads, none on the stage right above the bottleneck
    assert (kwargs["deep_supervision"], kwargs["deep_supr_num"], kwargs["res_block"]) == (True, 3, False)
    assert "blocks_per_stage" not in kwargs  # one block per stage: MONAI's DynUNet as it is
    residual = rules.dynunet_for_patch(patch, [1.5, 1.5, 3.0], residual=True)[1]
    assert residual["res_block"] is True and residual["blocks_per_stage"] == [1, 3, 4, 6, 6]  # nnU-Net's ResEnc encoder


def test_planned_networks_are_dynunets_of_nnunets_class_or_the_tutorial_unet():
    assert rules.network_for_patch("plain", [64, 64, 32], [1.0, 1.0, 1.0])[0] == "DynUNet"
    name, patch, kwargs, divisors = rules.network_for_patch("tutorial", [160, 128, 28], [1.0, 1.0, 1.0])
    assert (name, patch, kwargs) == ("UNet", *rules.unet_for_patch([160, 128, 28])) and divisors == [32, 32, 4]
