"""Whole-scan inference as medseg ran it before the slab-by-slab path, kept as the reference that path must equal:
MONAI's sliding-window inferer over the whole volume, softmax, MONAI ``Invertd`` of the foreground, argmax."""

from __future__ import annotations

import torch
from monai.data import MetaTensor
from monai.transforms import Invertd

from medseg.inference import Predictor
from medseg.inference.predictor import ScanInput, most_likely_class
from medseg.model.inferer import window_inferer


def whole_volume_prediction(predictor: Predictor, scan: ScanInput) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (labels, probabilities (classes, X, Y, Z)) on the scan's grid, computed on whole volumes (CPU only)."""
    data = dict(scan.data)
    image = data["image"].as_tensor()[None]
    with torch.inference_mode():
        logits = window_inferer(predictor.recipe, predictor.recipe.window.batch_size, predictor.device)(image, predictor._window_logits)
    probabilities = torch.softmax(logits[0].cpu(), dim=0)
    data["pred"] = MetaTensor(probabilities[1:])
    invert = Invertd(keys="pred", transform=predictor.preprocess, orig_keys="image", nearest_interp=False)
    foreground = invert(data)["pred"].as_tensor()
    restored = torch.cat([1.0 - foreground.sum(dim=0, keepdim=True), foreground])
    return most_likely_class(restored), restored
