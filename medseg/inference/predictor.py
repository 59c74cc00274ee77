"""Whole-scan prediction: training's preprocessing, MONAI sliding windows, inversion back onto the scan's grid."""

from __future__ import annotations

import itertools
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from lightning.pytorch.utilities.memory import garbage_collection_cuda
from monai.data import MetaTensor
from monai.inferers import sliding_window_inference
from monai.transforms import Invertd

from medseg.data.demo import default_cache_dir
from medseg.data.transforms import preprocessing_transforms
from medseg.errors import MedsegError
from medseg.inference.checkpoint import TrainedModel, load_trained_model
from medseg.memory.callback import plan_on_device
from medseg.memory.measure import TrainingSetup, is_out_of_memory
from medseg.memory.plan import PlanCache
from medseg.inference.io import READ_ERRORS, Scan, label_dtype, open_scan, saved_image

# Share of free GPU memory the stitched output may take; the rest is left for the windows' activations.
OUTPUT_SHARE_OF_FREE_GPU = 0.5
FLIP_AXES = [dims for n in (1, 2, 3) for dims in itertools.combinations((2, 3, 4), n)]


@dataclass(frozen=True)
class InferenceOptions:
    """How to run sliding-window inference.

    Attributes:
        overlap: fraction of a window shared with its neighbours (0 <= overlap < 1); 0.5 as in nnU-Net.
        gaussian: weight window centres more than edges when blending (MONAI ``mode="gaussian"``).
        tta: also predict on the 7 flipped copies of each window and average (8x slower).
        sw_batch_size: windows per forward pass; None asks ``default_window_batch_size``.
        device: "cpu", "cuda", "cuda:1", ...; None picks the GPU when there is one.
        mixed_precision: float16 autocast for the network on GPU (ignored on CPU).
        probabilities: also return per-class probabilities on the scan's grid.
    """

    overlap: float = 0.5
    gaussian: bool = True
    tta: bool = False
    sw_batch_size: int | None = None
    device: str | None = None
    mixed_precision: bool = True
    probabilities: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.overlap < 1.0:
            raise MedsegError(f"overlap must be in [0, 1), got {self.overlap}")
        if self.sw_batch_size is not None and self.sw_batch_size < 1:
            raise MedsegError(f"window batch size must be at least 1, got {self.sw_batch_size}")

    def resolved_device(self) -> torch.device:
        """Return the device to run windows on, refusing a GPU that is not there."""
        if self.device is None:
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            device = torch.device(self.device)
        except RuntimeError:
            raise MedsegError(f"unknown device {self.device!r}: use cpu, cuda or cuda:N") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise MedsegError(f"device {self.device} requested but no CUDA GPU is available; use --device cpu")
        return device


@dataclass(frozen=True)
class Prediction:
    """A scan's segmentation on its own voxel grid.

    Attributes:
        labels: (X, Y, Z) class indices, uint8 (uint16 beyond 256 classes), in the file's voxel order.
        affine: the scan's voxel-to-world affine.
        probabilities: (X, Y, Z, classes) float32, only when asked for.
        route: one line saying where windows ran, where they were stitched and the window batch used.
    """

    labels: np.ndarray
    affine: np.ndarray
    probabilities: np.ndarray | None
    route: str


def default_window_batch_size(model: TrainedModel, device: torch.device, mixed_precision: bool) -> int:
    """Return the window batch size used when the user gives none.

    On a GPU: the memory planner's largest verified forward-only batch (cached per model, patch and GPU),
    within the share of free memory that the stitched output does not reserve. On a CPU: 4, which keeps
    the cores busy; out-of-memory retries halve it either way.
    """
    if device.type != "cuda":
        return 4
    setup = TrainingSetup(
        net=model.network,
        loss_fn=None,
        make_optimizer=None,
        in_channels=model.in_channels,
        out_channels=model.out_channels,
        patch_size=model.patch_size,
        config={"source": str(model.source)},
    )
    precision = "16-mixed" if mixed_precision else "32-true"
    plan = plan_on_device(setup, precision, budget_fraction=1.0 - OUTPUT_SHARE_OF_FREE_GPU, train=False, cache=PlanCache(default_cache_dir() / "window_plans.json"))
    return plan.batch_size


def output_fits_on_device(shape: tuple[int, ...], channels: int, classes: int, device: torch.device) -> bool:
    """Return whether the input, the stitched output and MONAI's weight map (float32) fit on `device` with room for windows."""
    if device.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    needed = (channels + classes + 1) * int(np.prod(shape)) * 4
    return needed <= OUTPUT_SHARE_OF_FREE_GPU * free


def sliding_window_probabilities(
    network: torch.nn.Module,
    image: torch.Tensor,
    patch_size: tuple[int, int, int],
    options: InferenceOptions,
    sw_batch_size: int,
    device: torch.device,
    stitch_device: torch.device,
) -> torch.Tensor:
    """Return softmax probabilities (1, classes, X, Y, Z) on `stitch_device` for a (1, C, X, Y, Z) image.

    Windows run on `device` (float16 autocast on GPU when allowed); the whole-volume output is
    accumulated on `stitch_device`, which may be the CPU when it does not fit on the GPU.
    """
    autocast = (
        torch.autocast("cuda", dtype=torch.float16) if device.type == "cuda" and options.mixed_precision else nullcontext()
    )

    def predict_windows(windows: torch.Tensor) -> torch.Tensor:
        with autocast:
            probs = torch.softmax(network(windows).float(), dim=1)
            if options.tta:
                for dims in FLIP_AXES:
                    probs += torch.softmax(network(windows.flip(dims)).float(), dim=1).flip(dims)
                probs /= len(FLIP_AXES) + 1
        return probs

    with torch.inference_mode():
        return sliding_window_inference(
            image.to(stitch_device),
            roi_size=patch_size,
            sw_batch_size=sw_batch_size,
            predictor=predict_windows,
            overlap=options.overlap,
            mode="gaussian" if options.gaussian else "constant",
            sw_device=device,
            device=stitch_device,
        )


class Predictor:
    """Segments whole scans with one loaded model; reuse it across a folder so the model loads once."""

    def __init__(self, model: TrainedModel, options: InferenceOptions | None = None) -> None:
        self.model = model
        self.options = options or InferenceOptions()
        self.device = self.options.resolved_device()
        self.model.network.to(self.device)
        self.sw_batch_size = self.options.sw_batch_size or default_window_batch_size(model, self.device, self.options.mixed_precision)
        self.preprocess = preprocessing_transforms(model.preprocessing, image_key="image", label_key=None)
        # Probabilities are resampled (not nearest) back to the scan's grid, then argmaxed there.
        self.invert = Invertd(keys="pred", transform=self.preprocess, orig_keys="image", nearest_interp=False)

    def _windows_with_fallback(self, image: torch.Tensor) -> tuple[torch.Tensor, str]:
        """Return probabilities and the route taken; on out-of-memory halve the window batch, then stitch on the CPU."""
        cpu = torch.device("cpu")
        classes = self.model.out_channels
        stitch = self.device if output_fits_on_device(tuple(image.shape[2:]), image.shape[1], classes, self.device) else cpu
        batch, notes = self.sw_batch_size, []
        if stitch != self.device:
            notes.append("output too large for the GPU")
        while True:
            try:
                probs = sliding_window_probabilities(
                    self.model.network, image, self.model.patch_size, self.options, batch, self.device, stitch
                )
                break
            except RuntimeError as err:
                if not is_out_of_memory(err):
                    raise
                garbage_collection_cuda()
                if batch > 1:
                    batch //= 2
                    notes.append(f"out of memory, retried with window batch {batch}")
                elif stitch != cpu:
                    stitch = cpu
                    notes.append("out of memory, retried stitching on cpu")
                else:
                    raise MedsegError(f"out of memory on {self.device} even with window batch 1 and stitching on the CPU") from None
        self.sw_batch_size = batch  # later scans start from the batch that fitted, not from another out-of-memory
        precision = "float16" if self.device.type == "cuda" and self.options.mixed_precision else "float32"
        route = f"windows on {self.device} ({precision}, batch {batch}), stitched on {stitch}"
        return probs[0].to(cpu), route + "".join(f"; {note}" for note in notes)

    def predict(self, scan: Scan) -> Prediction:
        """Return the segmentation of `scan` on the scan's own grid (its shape, voxel order and affine)."""
        source = [str(p) for p in scan.paths] if len(scan.paths) > 1 else str(scan.paths[0])
        try:
            data = self.preprocess({"image": source})
        except RuntimeError as err:  # MONAI wraps a transform's error; a damaged file shows as its cause
            if not isinstance(err.__cause__, READ_ERRORS):
                raise
            raise MedsegError(f"cannot read {', '.join(map(str, scan.paths))} (corrupt or truncated?): {err.__cause__}") from None
        probs, route = self._windows_with_fallback(data["image"].as_tensor()[None])
        data["pred"] = MetaTensor(probs)
        restored = self.invert(data)["pred"].as_tensor()
        # Inverse cropping pads every class with 0; background is what the foreground classes leave.
        restored[0] = 1.0 - restored[1:].sum(dim=0)
        if tuple(restored.shape[1:]) != scan.spatial_shape:
            raise RuntimeError(f"inverted prediction has shape {tuple(restored.shape[1:])}, scan {scan.spatial_shape}")
        labels = restored.argmax(dim=0).numpy().astype(label_dtype(self.model.out_channels))
        probabilities = np.ascontiguousarray(restored.permute(1, 2, 3, 0).numpy()) if self.options.probabilities else None
        return Prediction(labels, scan.reference.affine, probabilities, route)


def predict_volume(
    checkpoint: str | Path | TrainedModel,
    image: str | Path | nib.Nifti1Image,
    options: InferenceOptions | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Return (labels, affine) for one NIfTI path or in-memory nibabel image: the notebook entry point.

    `labels` is (X, Y, Z) in the image's own voxel order, so ``nib.Nifti1Image(labels, affine)``
    overlays the scan in any viewer.
    """
    model = checkpoint if isinstance(checkpoint, TrainedModel) else load_trained_model(checkpoint)
    predictor = Predictor(model, options)
    if isinstance(image, (str, Path)):
        prediction = predictor.predict(open_scan(image, model.in_channels))
    else:
        with saved_image(image) as path:
            prediction = predictor.predict(replace(open_scan(path, model.in_channels), reference=image))
    return prediction.labels, prediction.affine
