"""nnU-Net's planning rules as plain functions of the fingerprint: spacing, normalisation, patch, network, batch.

Each rule says where its numbers come from, so the written config can carry that as a comment.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from medseg.data.fingerprint import DatasetFingerprint
from medseg.errors import MedsegError
from medseg.option_values import PLANNED_NETWORKS

ANISOTROPY_RATIO = 3.0  # a median spacing this many times the others' is "strongly anisotropic" (nnU-Net)
BOTTLENECK_VOXELS = 4  # pool an axis while it stays at least this many voxels (nnU-Net's minimum feature map)
MAX_POOLINGS = 5
BASE_CHANNELS, MAX_CHANNELS = 32, 320  # nnU-Net's 3d_fullres widths
RESENC_BLOCKS_PER_STAGE = (1, 3, 4, 6)  # nnU-Net's ResEnc UNets (ResEncUNetPlanner); 6 for every deeper stage
REFERENCE_PATCH_VOXELS = 256**3  # nnU-Net's first patch: this many voxels, isotropic in mm, cut to the median shape
MIN_BATCH_SIZE = 2
MAX_DATASET_SHARE = 0.05  # one batch covers at most this share of the dataset's voxels
THROUGHPUT_GAIN = 0.10  # stop doubling the batch when samples/s rises less than this


def target_spacing(fingerprint: DatasetFingerprint) -> tuple[tuple[float, float, float], str]:
    """Return the target spacing (mm) and why: the median, but the coarse axis's 10th percentile when it is > 3x the others."""
    spacings = fingerprint.spacings()
    target = np.median(spacings, axis=0)
    coarse = int(np.argmax(target))
    others = [axis for axis in range(3) if axis != coarse]
    if target[coarse] > ANISOTROPY_RATIO * max(target[others]):
        # nnU-Net: resample the thick-slice axis a little finer than its median, never finer than the other axes
        target[coarse] = max(np.percentile(spacings[:, coarse], 10), max(target[others]))
        return tuple(round(float(v), 4) for v in target), f"median spacing; axis {coarse} is > {ANISOTROPY_RATIO:g}x the others: its 10th percentile"
    return tuple(round(float(v), 4) for v in target), "median spacing of the cases"


def resampled_shapes(fingerprint: DatasetFingerprint, spacing: Sequence[float]) -> np.ndarray:
    """Return each case's shape (cases, 3) in voxels after resampling to ``spacing``."""
    return fingerprint.shapes() * fingerprint.spacings() / np.asarray(spacing, dtype=float)


def normalization(fingerprint: DatasetFingerprint) -> tuple[dict[str, Any], str]:
    """Return the data module's normalisation settings and why: CT clipped to foreground percentiles then z-scored, else per-case z-score."""
    if not fingerprint.is_ct:
        return {"normalization": "zscore"}, "not CT: per-case z-score of each channel"
    stats = fingerprint.foreground_intensity(0)
    low, high = round(stats["percentile_00_5"], 2), round(stats["percentile_99_5"], 2)
    if high <= low:  # a foreground of one HU value: widen to a window training accepts (low < high)
        low, high = low - 1.0, high + 1.0
    settings = {
        "normalization": "ct_zscore",
        "ct_window": [low, high],
        "ct_mean": round(stats["mean"], 3),
        "ct_std": round(max(stats["std"], 1e-3), 3),
    }
    return settings, "CT: clip to the 0.5-99.5 percentiles of foreground HU, then z-score with the foreground mean and std"


def first_patch(spacing: Sequence[float], median_shape: Sequence[float]) -> list[int]:
    """Return nnU-Net's starting patch: 256^3 voxels' worth, isotropic in mm, no larger than the median shape."""
    inverse = 1.0 / np.asarray(spacing, dtype=float)
    isotropic = inverse * (REFERENCE_PATCH_VOXELS / np.prod(inverse)) ** (1 / 3)
    return [int(min(round(a), round(m))) for a, m in zip(isotropic, median_shape)]


def poolings(patch: Sequence[int]) -> list[int]:
    """Return per axis how many 2x poolings keep that axis at least ``BOTTLENECK_VOXELS`` voxels."""
    return [max(0, min(MAX_POOLINGS, int(math.floor(math.log2(max(size, 1) / BOTTLENECK_VOXELS))))) for size in patch]


def unet_for_patch(patch: Sequence[int]) -> tuple[list[int], dict[str, Any]]:
    """Return the patch cut to what the network divides, and MONAI UNet arguments bringing it to ~4 voxels per axis."""
    counts = poolings(patch)
    depth = max(max(counts), 1)
    rounded = [max(size // 2**count * 2**count, 1) for size, count in zip(patch, counts)]
    strides = [[2 if level < count else 1 for count in counts] for level in range(depth)]
    channels = [min(BASE_CHANNELS * 2**level, MAX_CHANNELS) for level in range(depth + 1)]
    return rounded, {"channels": channels, "strides": strides, "num_res_units": 1}


def pool_and_conv_props(spacing: Sequence[float], patch: Sequence[int]) -> tuple[list[list[int]], list[list[int]], list[int], list[int]]:
    """Return nnU-Net's topology for a patch: strides per stage (the first 1: full resolution), kernel sizes per stage,
    the patch padded up to what the strides divide, and that divisor per axis.

    nnU-Net v2's ``get_pool_and_conv_props`` (``network_topology.py``) with its planner's limits (feature maps of at
    least 4 voxels, no cap on poolings): each stage pools the axes that keep >= 4 voxels and whose spacing is within 2x
    of the finest; a lone axis pools only while it has >= 12 voxels. An axis's kernel is 3 once its spacing is within
    2x of the finest, else 1 (thick slices convolve in-plane first); the bottleneck's is 3 on every axis. (nnU-Net
    compares ``spacings_of_axes[d]``, the spacings of the axes still large enough; this compares axis d's own, which is
    the same while every axis is large enough and avoids its index error when one is not.)
    """
    current_spacing, size = [float(v) for v in spacing], [int(v) for v in patch]
    strides, kernels = [[1, 1, 1]], []
    pools, kernel = [0, 0, 0], [1, 1, 1]
    while True:
        large = [axis for axis in range(3) if size[axis] >= 2 * BOTTLENECK_VOXELS]
        if not large:
            break
        finest = min(current_spacing[axis] for axis in large)
        pooled = [axis for axis in large if current_spacing[axis] / finest < 2]
        if len(pooled) == 1 and size[pooled[0]] < 3 * BOTTLENECK_VOXELS:
            break
        kernel = [3 if k == 3 or current_spacing[axis] / min(current_spacing) < 2 else 1 for axis, k in enumerate(kernel)]
        for axis in pooled:
            pools[axis] += 1
            current_spacing[axis] *= 2
            size[axis] = math.ceil(size[axis] / 2)
        strides.append([2 if axis in pooled else 1 for axis in range(3)])
        kernels.append(list(kernel))
    kernels.append([3, 3, 3])
    divisors = [2**count for count in pools]
    return strides, kernels, [math.ceil(s / d) * d for s, d in zip(patch, divisors)], divisors


def dynunet_for_patch(patch: Sequence[int], spacing: Sequence[float], residual: bool) -> tuple[list[int], dict[str, Any], list[int]]:
    """Return the padded patch, MONAI DynUNet arguments of nnU-Net's class (two convolutions per stage, instance norm
    and leaky ReLU, DynUNet's defaults; 32 channels doubling to 320; ``residual``: nnU-Net's residual encoder, residual
    blocks stacked 1, 3, 4, 6, 6, ... per stage) with deep supervision on every decoder stage but the lowest, and the
    patch's divisor per axis."""
    strides, kernels, padded, divisors = pool_and_conv_props(spacing, patch)
    stages = len(strides)
    kwargs: dict[str, Any] = {
        "kernel_size": kernels,
        "strides": strides,
        "upsample_kernel_size": [list(stride) for stride in strides[1:]],  # copies: YAML writes shared lists as anchors
        "filters": [min(BASE_CHANNELS * 2**stage, MAX_CHANNELS) for stage in range(stages)],
        "res_block": residual,
    }
    if residual:
        kwargs["blocks_per_stage"] = [RESENC_BLOCKS_PER_STAGE[min(stage, len(RESENC_BLOCKS_PER_STAGE) - 1)] for stage in range(stages)]
    if stages >= 3:  # DynUNet's heads: the top output plus deep_supr_num, at most every decoder stage but the lowest
        kwargs.update(deep_supervision=True, deep_supr_num=stages - 2)
    return padded, kwargs, divisors


def network_for_patch(network: str, patch: Sequence[int], spacing: Sequence[float]) -> tuple[str, list[int], dict[str, Any], list[int]]:
    """Return the MONAI network name, the patch it divides, its arguments and the patch's divisor per axis for a
    planned network ("plain", "resenc" or "tutorial": ``medseg.option_values.PLANNED_NETWORKS``)."""
    if network == "tutorial":
        size, kwargs = unet_for_patch(patch)
        return "UNet", size, kwargs, [2**count for count in poolings(size)]
    if network not in ("plain", "resenc"):
        raise MedsegError(f"unknown planned network {network!r}: choose one of {', '.join(PLANNED_NETWORKS)}")
    size, kwargs, divisors = dynunet_for_patch(patch, spacing, residual=network == "resenc")
    return "DynUNet", size, kwargs, divisors


def smaller_patch(patch: Sequence[int], median_shape: Sequence[float], divisors: Sequence[int]) -> list[int]:
    """Return the patch one step smaller: the axis largest relative to the median shape loses its divisor (nnU-Net)."""
    ratios = [size / max(m, 1) for size, m in zip(patch, median_shape)]
    axis = int(np.argsort(ratios, kind="stable")[-1])
    smaller = list(patch)
    smaller[axis] = max(smaller[axis] - divisors[axis], BOTTLENECK_VOXELS)
    if smaller == list(patch):
        raise MedsegError(f"no smaller patch than {list(patch)}: the memory budget is too small for any network")
    return smaller


def dataset_batch_limit(patch: Sequence[int], dataset_voxels: float) -> int:
    """Return the largest batch the dataset warrants: at most ``MAX_DATASET_SHARE`` of its voxels per step, at least 2."""
    return max(MIN_BATCH_SIZE, int(MAX_DATASET_SHARE * dataset_voxels // math.prod(patch)))


def throughput_knee(samples_per_second: dict[int, float]) -> int:
    """Return the batch size after which doubling adds less than 10 % samples/s (sizes are doublings from 2)."""
    sizes = sorted(samples_per_second)
    for smaller, larger in zip(sizes, sizes[1:]):
        if samples_per_second[larger] < (1 + THROUGHPUT_GAIN) * samples_per_second[smaller]:
            return smaller
    return sizes[-1]
