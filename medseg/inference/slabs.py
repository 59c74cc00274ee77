"""Sliding-window blending that hands the blended logits out slab by slab, so no whole-scan buffer of every class exists.

MONAI's ``sliding_window_inference`` keeps one float32 buffer of every class's logits over the whole volume (MONAI
#6427): 94 GiB for 100 classes on a 512x512x900 CT. MONAI visits windows with the first spatial axis slowest, so once
the windows starting at one row of that axis are blended, every row before the next start is final. Here only the
rows of one window start are held (classes x patch rows x the other two axes); finished rows are handed on and
dropped. Windows, batches, weights and the order of every sum are MONAI's, so each voxel's blend is the same number.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from monai.data.utils import compute_importance_map, dense_patch_slices
from monai.inferers.utils import _get_scan_interval

from medseg.recipe import Recipe

# Finished rows are divided and handed on this many at a time, so the consumer's copies stay a few rows deep.
ROWS_PER_SLAB = 8


def blended_slabs(
    image: torch.Tensor,
    window_logits: Callable[[torch.Tensor], torch.Tensor],
    recipe: Recipe,
    batch_size: int,
    window_device: torch.device,
    stitch_device: torch.device,
) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield (first row, blended logits (classes, rows, Y, Z) on ``stitch_device``) for a (1, C, X, Y, Z) image, in row order.

    The same numbers as MONAI's ``sliding_window_inference`` with the recipe's patch, overlap and blending (what
    ``medseg.model.inferer.window_inferer`` runs for validation), without its whole-volume output.

    Args:
        image: the preprocessed scan, batch of one.
        window_logits: network on a batch of windows, returning float32 logits of the windows' shape.
        recipe: patch size and ``recipe.window`` (overlap, Gaussian blending).
        batch_size: windows per forward pass.
        window_device: where windows run.
        stitch_device: where the rows being blended are held.
    """
    roi = tuple(recipe.patch_size)
    shape = tuple(image.shape[2:])
    # MONAI pads a scan smaller than the window evenly on both sides, and crops the padding off at the end
    padding = [(max(r - s, 0) // 2, max(r - s, 0) - max(r - s, 0) // 2) for r, s in zip(roi, shape)]
    image = F.pad(image, [p for pair in reversed(padding) for p in pair]) if any(map(any, padding)) else image
    padded = tuple(image.shape[2:])
    windows = dense_patch_slices(padded, roi, _get_scan_interval(padded, roi, 3, (recipe.window.overlap,) * 3))
    mode = "gaussian" if recipe.window.gaussian else "constant"
    weight = compute_importance_map(roi, mode=mode, sigma_scale=0.125, device=window_device, dtype=image.dtype)[None, None]
    stitch_weight = weight.to(stitch_device)
    keep = tuple(slice(before, before + size) for (before, _), size in zip(padding[1:], shape[1:]))
    rows = range(padding[0][0], padding[0][0] + shape[0])

    logits = counts = None
    first = 0  # the row buffer's first row
    for begin in range(0, len(windows), batch_size):
        batch = windows[begin : begin + batch_size]
        out = window_logits(torch.cat([image[(slice(None), slice(None), *w)] for w in batch]).to(window_device))
        out *= weight
        out = out.to(stitch_device)
        for window, blended in zip(batch, out):
            start = window[0].start
            if logits is None:
                logits = torch.zeros((blended.shape[0], roi[0], *padded[1:]), dtype=image.dtype, device=stitch_device)
                counts = torch.zeros((1, roi[0], *padded[1:]), dtype=image.dtype, device=stitch_device)
            if start > first:  # every row before this window's start is final
                yield from _finished(logits, counts, first, start, rows, keep)
                _drop_rows(logits, start - first)
                _drop_rows(counts, start - first)
                first = start
            inside = (slice(None), slice(start - first, start - first + roi[0]), *window[1:])
            logits[inside] += blended
            counts[inside] += stitch_weight[0]
    yield from _finished(logits, counts, first, first + roi[0], rows, keep)


def _finished(
    logits: torch.Tensor, counts: torch.Tensor, first: int, end: int, rows: range, keep: tuple[slice, slice]
) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield the blended rows ``[first, end)`` of the padded scan that lie in the scan, ``ROWS_PER_SLAB`` at a time."""
    for row in range(max(first, rows.start), min(end, rows.stop), ROWS_PER_SLAB):
        local = slice(row - first, min(row + ROWS_PER_SLAB, end, rows.stop) - first)
        yield row - rows.start, logits[(slice(None), local, *keep)] / counts[(slice(None), local, *keep)]


def _drop_rows(buffer: torch.Tensor, count: int) -> None:
    """Move the rows of a (channels, rows, Y, Z) buffer ``count`` rows up in place, zeroing the rows freed at the end."""
    for row in range(buffer.shape[1] - count):  # row by row: a row and the one it takes never share memory
        buffer[:, row].copy_(buffer[:, row + count])
    buffer[:, buffer.shape[1] - count :].zero_()
