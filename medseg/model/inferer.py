"""The sliding-window inferer of a recipe: validation during training calls it; whole-scan inference blends the same
windows with the same arithmetic slab by slab (``medseg.inference.slabs``), and a test pins the two equal."""

from __future__ import annotations

import torch
from monai.inferers import SlidingWindowInfererAdapt

from medseg.recipe import Recipe


def window_inferer(recipe: Recipe, batch_size: int | None = None, window_device: torch.device | None = None) -> SlidingWindowInfererAdapt:
    """Return MONAI's sliding-window inferer with the recipe's patch, overlap and blending.

    Windows run on ``window_device`` (default: where the input is). The whole-volume output is stitched where
    the input is; for a GPU input MONAI's adaptive inferer falls back to buffered, then CPU stitching when
    the output does not fit, and remembers the size for later volumes.

    Args:
        recipe: the trained model's recipe (patch size and ``recipe.window``).
        batch_size: windows per forward pass; None takes ``recipe.window.batch_size``.
        window_device: device the network runs on.
    """
    window = recipe.window
    return SlidingWindowInfererAdapt(
        roi_size=recipe.patch_size,
        sw_batch_size=batch_size or window.batch_size,
        overlap=window.overlap,
        mode="gaussian" if window.gaussian else "constant",
        sw_device=window_device,
    )
