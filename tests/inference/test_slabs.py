"""Slab-by-slab blending: MONAI's whole-volume blend, voxel for voxel, holding one window start's rows."""

from __future__ import annotations

import pytest
import torch

from medseg.inference.slabs import ROWS_PER_SLAB, blended_slabs
from medseg.model.inferer import window_inferer
from medseg.model.networks import build_network
from medseg.recipe import Recipe, Window
from tests.helpers.largest_tensor import LargestTensor

CPU = torch.device("cpu")
CLASSES = 5


def _recipe(patch: tuple[int, int, int], overlap: float = 0.25, gaussian: bool = True, batch_size: int = 4) -> Recipe:
    names = tuple(f"class{i}" for i in range(CLASSES))
    return Recipe("UNet", {}, ("CT",), names, patch, window=Window(overlap=overlap, gaussian=gaussian, batch_size=batch_size))


@pytest.fixture(scope="module")
def window_logits():
    torch.manual_seed(0)
    network = build_network("UNet", 1, CLASSES, channels=[4, 8], strides=[2], num_res_units=0).eval()
    return lambda windows: network(windows).float()


@pytest.mark.parametrize(
    "shape, patch, overlap, gaussian, batch_size",
    [
        ((40, 36, 20), (16, 16, 16), 0.25, True, 4),  # windows of a batch cross from one window start to the next
        ((12, 30, 21), (16, 16, 8), 0.5, False, 3),  # smaller than the window along X: padded, then cropped
        ((50, 20, 33), (16, 8, 16), 0.0, True, 1),
    ],
)
def test_slabs_are_monais_whole_volume_blend_voxel_for_voxel(window_logits, shape, patch, overlap, gaussian, batch_size):
    recipe = _recipe(patch, overlap, gaussian, batch_size)
    image = torch.rand(1, 1, *shape, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        whole = window_inferer(recipe, batch_size, CPU)(image, window_logits)[0]
        slabs = list(blended_slabs(image, window_logits, recipe, batch_size, CPU, CPU))
    ends = [first + slab.shape[1] for first, slab in slabs]
    assert [first for first, _ in slabs] == [0, *ends[:-1]] and ends[-1] == shape[0]  # in order, every row once
    assert max(slab.shape[1] for _, slab in slabs) <= ROWS_PER_SLAB
    assert torch.equal(torch.cat([slab for _, slab in slabs], dim=1), whole)


def test_blending_holds_one_window_start_of_rows_not_the_whole_scan(window_logits):
    shape, patch = (160, 24, 20), (16, 16, 16)
    image = torch.rand(1, 1, *shape)
    with torch.inference_mode(), LargestTensor() as largest:
        for _ in blended_slabs(image, window_logits, _recipe(patch), 4, CPU, CPU):
            pass
    rows_of_one_start = CLASSES * patch[0] * shape[1] * shape[2] * 4
    logits_of_a_window_batch = 4 * CLASSES * patch[0] * patch[1] * patch[2] * 4
    assert largest.bytes <= max(rows_of_one_start, logits_of_a_window_batch, image.numel() * 4)
    assert largest.bytes * 4 < CLASSES * image.numel() * 4  # the whole-volume buffer MONAI would hold
