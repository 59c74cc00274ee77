"""Whole-scan prediction: the recipe's preprocessing, its sliding windows at its precision, inversion onto the scan's grid,
slab by slab so that memory does not grow with classes x voxels."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch

from medseg.data.formats import Case
from medseg.data.transforms import preprocessing_transforms
from medseg.errors import MedsegError
from medseg.inference.checkpoint import TrainedModel, load_trained_model
from medseg.inference.postprocessing import Postprocessing
from medseg.inference.scan_grid import ScanGridSlabs
from medseg.inference.slabs import blended_slabs
from medseg.io.dicom_series import require_pydicom
from medseg.io.nifti import READ_ERRORS, NiftiImage, label_dtype, open_scan, saved_image, unreadable
from medseg.option_values import RUNTIMES
from medseg.planning.oom import is_out_of_memory, release_memory, smaller_size
from medseg.planning.step import cudnn_autotuning
from medseg.precision import autocast, check_precision, inference_precision
from medseg.recipe import Window

FLIP_AXES = [dims for n in (1, 2, 3) for dims in itertools.combinations((2, 3, 4), n)]
# An ensemble's weights may take this share of the GPU memory free when inference starts; beyond it the models
# wait on the CPU and visit the GPU in turn, leaving the rest to windows and stitching
ENSEMBLE_WEIGHTS_SHARE = 0.25


@dataclass(frozen=True)
class InferenceOptions:
    """How to run sliding-window inference; None everywhere means "as the checkpoint's recipe says".

    Attributes:
        window: the recipe's window settings to override, by ``medseg.recipe.Window``'s names (``{"overlap": 0.5}``;
            the recipe's ``batch_size`` is the one training planned or used).
        precision: "32-true", "16-mixed" or "bf16-mixed"; None runs the trained precision where the device
            supports it (``medseg.precision.inference_precision``).
        tta: also predict on the 7 flipped copies of each window and average (8x slower).
        device: "cpu", "cuda", "cuda:1", ...; None picks the GPU when there is one.
        probabilities: also return per-class probabilities on the scan's grid.
        runtime: what runs the windows: "torch", or for an export folder "onnxruntime" or "openvino"; None: the
            export's recorded default, torch for a checkpoint.
    """

    window: dict[str, Any] = field(default_factory=dict)
    precision: str | None = None
    tta: bool = False
    device: str | None = None
    probabilities: bool = False
    runtime: str | None = None

    def __post_init__(self) -> None:
        if self.precision is not None:
            check_precision(self.precision)
        unknown = sorted(set(self.window) - {setting.name for setting in fields(Window)})
        if unknown:
            raise MedsegError(f"unknown window settings {unknown}: a window has {[setting.name for setting in fields(Window)]}")
        replace(Window(), **self.window)  # a bad value is refused now, not at the first scan
        if self.runtime is not None and self.runtime not in RUNTIMES:
            raise MedsegError(f"unknown runtime {self.runtime!r}: choose one of {', '.join(RUNTIMES)}")

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
        reference: the scan's header (affine, qform/sform), which outputs copy.
        probabilities: (X, Y, Z, classes) float32, only when asked for.
        route: one line saying where windows ran, at which precision and batch, and where they were stitched.
    """

    labels: np.ndarray
    reference: NiftiImage
    probabilities: np.ndarray | None
    route: str


def most_likely_class(probabilities: torch.Tensor) -> torch.Tensor:
    """Return the class index of the largest of (classes, X, Y, Z) probabilities per voxel, the first on ties.

    The same as ``argmax(dim=0)``, with one comparison per class: on CPUs ``argmax`` over the leading
    dimension of a whole scan takes about ten times as long.
    """
    best = probabilities[0]
    labels = torch.zeros(probabilities.shape[1:], dtype=torch.int64 if len(probabilities) > 256 else torch.uint8, device=probabilities.device)
    for index in range(1, len(probabilities)):
        better = probabilities[index] > best
        labels.masked_fill_(better, index)
        best = torch.where(better, probabilities[index], best)
    return labels


@dataclass(frozen=True)
class ScanInput:
    """A scan preprocessed into the network's space (MONAI dictionary, its transforms recorded for inversion) and
    the header its outputs copy."""

    data: dict[str, Any]
    reference: NiftiImage


def weight_bytes(network: torch.nn.Module) -> int:
    """Return the bytes of a network's parameters and buffers."""
    return sum(t.numel() * t.element_size() for t in itertools.chain(network.parameters(), network.buffers()))


def ensemble_stays_on_device(member_bytes: Sequence[int], free_bytes: int) -> bool:
    """Return whether every model of an ensemble may stay on the GPU: one model always does, several while their
    weights together take at most ``ENSEMBLE_WEIGHTS_SHARE`` of the free memory."""
    return len(member_bytes) == 1 or sum(member_bytes) <= ENSEMBLE_WEIGHTS_SHARE * free_bytes


class Predictor:
    """Segments whole scans with one loaded model, or an ensemble of them, as the (first) recipe says; reuse it across a
    folder so the models load once."""

    def __init__(
        self, model: TrainedModel | Sequence[TrainedModel], options: InferenceOptions | None = None, postprocessing: Postprocessing | None = None
    ) -> None:
        self.models = [model] if isinstance(model, TrainedModel) else list(model)
        self.options = options or InferenceOptions()
        self.postprocessing = postprocessing
        self.device = self.options.resolved_device()
        first = self.models[0].recipe
        self.recipe = first.with_changes(window=dict(self.options.window))
        self.precision = self.options.precision or inference_precision(first.precision, self.device.type)
        self.runtime = self.options.runtime or self.models[0].runtime
        if self.runtime != "torch":
            self._use_runtime()
        self.resident = self.device.type != "cuda" or ensemble_stays_on_device(
            [weight_bytes(member.network) for member in self.models], torch.cuda.mem_get_info(self.device)[0]
        )
        for member in self.models:
            # channels-last weights: with cuDNN autotuning (below) fp16 windows ran 1.28x faster on an H200
            # (benchmarks/results/inference/inference_cuda_autotuned.md), and oneDNN's kernels ran a CPU's bf16 and fp32 windows
            # 1.2-1.3x faster (benchmarks/results/inference/inference_cpu_stages.md)
            member.network.to(self.device if self.resident else "cpu", memory_format=torch.channels_last_3d)
        self.preprocess = preprocessing_transforms(self.recipe.preprocessing, image_key="image", label_key=None)

    def _use_runtime(self) -> None:
        """Swap the exported network for the same network run by ``self.runtime`` (the precision becomes what it runs)."""
        from medseg.inference.checkpoint import EXPORT_ONNX, is_export
        from medseg.model.runtimes import runtime_network

        model = self.models[0]
        if not is_export(model.source):
            raise MedsegError(f"--runtime {self.runtime} runs an export folder, not {model.source}: export it first (python -m medseg.export)")
        network, self.precision = runtime_network(model.source / EXPORT_ONNX, self.runtime, self.precision, self.device)
        self.models = [replace(model, network=network)]

    def _window_logits(self, windows: torch.Tensor) -> torch.Tensor:
        """Return float32 logits of a batch of windows, averaged over the ensemble's models (and over flips with TTA).

        Every model sees the same windows one after another, and their mean is blended once: the same as nnU-Net's
        mean of each fold's blended logits (blending is linear), with one stitching buffer instead of one per model.
        Models that are not ``resident`` visit the device for their turn only.
        """
        with autocast(self.precision, self.device.type):
            logits = self._model_logits(self.models[0].network, windows)
            for member in self.models[1:]:  # summed in place: ``sum()`` would copy the first model's logits
                logits += self._model_logits(member.network, windows)
        return logits / len(self.models) if len(self.models) > 1 else logits

    def _model_logits(self, network: torch.nn.Module, windows: torch.Tensor) -> torch.Tensor:
        if not self.resident:
            network.to(self.device)
            try:
                return self._resident_logits(network, windows)
            finally:
                network.to("cpu")
        return self._resident_logits(network, windows)

    def _resident_logits(self, network: torch.nn.Module, windows: torch.Tensor) -> torch.Tensor:
        logits = network(windows).float()
        if self.options.tta:
            for dims in FLIP_AXES:
                logits += network(windows.flip(dims)).float().flip(dims)
            logits /= len(FLIP_AXES) + 1
        return logits

    def probabilities(self, image: torch.Tensor) -> tuple[torch.Tensor, str]:
        """Return softmax probabilities (classes, X, Y, Z) on the CPU for a (1, C, X, Y, Z) image, and the route taken.

        The whole-volume tensor is built here because it is what is asked for; ``predict`` never builds it.
        """
        slabs: list[torch.Tensor] = []

        def start_scan() -> Callable[[int, torch.Tensor], None]:
            slabs.clear()
            return lambda first_row, probabilities: slabs.append(probabilities)

        route = self._each_slab(image, start_scan)
        return torch.cat(slabs, dim=1), route

    def _each_slab(self, image: torch.Tensor, start_scan: Callable[[], Callable[[int, torch.Tensor], None]]) -> str:
        """Hand softmax probabilities (classes, rows, Y, Z) on the CPU of a (1, C, X, Y, Z) image, slab by slab along X,
        to the consumer ``start_scan`` returns, and return the route taken.

        Window logits are blended as validation blends them (``medseg.inference.slabs``), then turned into
        probabilities. Rows are blended on the window device, or on the CPU when they do not fit there (as MONAI's
        adaptive inferer falls back). If the windows themselves run out of memory, the window batch is halved and
        the scan retried, with a fresh consumer; the next scan starts again from the recipe's batch.
        """
        batch, notes = self.recipe.window.batch_size, []
        stitch_device = self.device
        while True:
            consume = start_scan()
            try:
                with torch.inference_mode(), cudnn_autotuning(self.device.type == "cuda"):
                    for first_row, logits in blended_slabs(image, self._window_logits, self.recipe, batch, self.device, stitch_device):
                        consume(first_row, torch.softmax(logits.cpu(), dim=0))
                break
            except RuntimeError as err:
                if not is_out_of_memory(err):
                    raise
            release_memory()  # outside the except block, where the error no longer pins the failed windows
            if stitch_device.type != "cpu":
                stitch_device = torch.device("cpu")
                notes.append("out of memory, stitched on the cpu")
                continue
            batch = smaller_size(batch)
            if batch is None:
                raise MedsegError(f"out of memory on {self.device} even with window batch 1 and stitching on the CPU")
            notes.append(f"out of memory, retried with window batch {batch}")
        runtime = "" if self.runtime == "torch" else f"{self.runtime}, "
        route = f"windows on {self.device} ({runtime}{self.precision}, batch {batch}), stitched on {stitch_device}"
        if not self.resident:
            route += f"; the {len(self.models)} models visit {self.device} in turn (their weights take over {ENSEMBLE_WEIGHTS_SHARE:.0%} of its free memory)"
        return route + "".join(f"; {note}" for note in notes)

    def read(self, case: Case, reference: NiftiImage | None = None) -> ScanInput:
        """Return ``case`` read and preprocessed into the network's space, with the header outputs copy.

        ``reference`` replaces the header read from the case's files (an in-memory image saved to a temporary file).
        Reading holds no model state, so a folder's next scan can be read while this one is segmented. A DICOM series
        is read into a NIfTI image first (``read_series``), and its outputs copy that image's header.
        """
        if case.dicom:
            return self._read_series(case)
        header = open_scan(case.images, self.recipe.in_channels)  # checks headers, geometry and grids before any voxel is read
        source = [str(p) for p in case.images] if len(case.images) > 1 else str(case.images[0])
        return ScanInput(self._preprocessed(source, ", ".join(map(str, case.images))), reference or header)

    def _preprocessed(self, source: str | list[str], name: str) -> dict[str, Any]:
        """Return the preprocessing of ``source``, whose one-line errors (non-finite voxels, a damaged file) name it
        rather than the MONAI transform that met them."""
        try:
            return self.preprocess({"image": source})
        except RuntimeError as err:  # MONAI wraps a transform's error; the user's problem shows as its cause
            if isinstance(err.__cause__, MedsegError):
                raise err.__cause__ from None
            if isinstance(err.__cause__, READ_ERRORS):
                raise unreadable(name, err.__cause__) from None
            raise

    def _read_series(self, case: Case) -> ScanInput:
        """Return a DICOM series preprocessed as a NIfTI scan of the same voxels and geometry would be."""
        require_pydicom(f"DICOM series {case.name}")
        from medseg.io.dicom_volume import read_series

        if self.recipe.in_channels != 1:
            raise MedsegError(f"DICOM series {case.name} is one channel but the model expects {self.recipe.in_channels}")
        image = read_series(case.name, case.images)
        with saved_image(image) as path:
            return ScanInput(self._preprocessed(str(path), case.name), image)

    def predict(self, case: Case | ScanInput, reference: NiftiImage | None = None) -> Prediction:
        """Return the segmentation of ``case`` (or of a scan ``read`` already) on its own grid: shape, voxel order and
        affine of its first file.

        Probabilities are reduced to labels slab by slab on the scan's grid (``medseg.inference.scan_grid``), so
        memory holds a few rows of every class, the label map, and the probabilities only when asked for.
        """
        scan = case if isinstance(case, ScanInput) else self.read(case, reference)
        image, reference = scan.data["image"], scan.reference
        shape = tuple(reference.shape[:3])
        if tuple(int(size) for size in image.meta["spatial_shape"]) != shape:
            raise RuntimeError(f"preprocessed scan comes from a grid of shape {tuple(image.meta['spatial_shape'])}, scan {shape}")
        classes = self.recipe.out_channels
        labels = torch.zeros(shape, dtype=torch.int64 if classes > 256 else torch.uint8)
        probabilities = np.empty((*shape, classes), np.float32) if self.options.probabilities else None

        def start_scan() -> Callable[[int, torch.Tensor], None]:
            to_scan = ScanGridSlabs(image)

            def consume(first_row: int, slab: torch.Tensor) -> None:
                # Only the foreground classes are resampled: outside the crop they are 0, and background is
                # what the foreground leaves, computed on the scan's grid.
                for index, foreground in to_scan.add(first_row, slab[1:]):
                    restored = torch.cat([1.0 - foreground.sum(dim=0, keepdim=True), foreground])
                    labels[index] = most_likely_class(restored)
                    if probabilities is not None:
                        probabilities[index] = restored.permute(1, 2, 3, 0).numpy()

            return consume

        route = self._each_slab(image.as_tensor()[None], start_scan)
        labels = labels.numpy().astype(label_dtype(classes), copy=False)
        if self.postprocessing is not None and self.postprocessing.does_anything:
            labels = self.postprocessing.apply(labels)
            route += f"; {self.postprocessing.describe()}"
        return Prediction(labels, reference, probabilities, route)


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
        prediction = predictor.predict(Case(Path(image).name, (Path(image),)))
    else:
        with saved_image(image) as path:
            prediction = predictor.predict(Case("image", (path,)), reference=image)
    return prediction.labels, prediction.reference.affine
