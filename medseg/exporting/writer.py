"""Write one self-describing export folder from checkpoints: the network(s) as ONNX and TorchScript, the recipe, the
postprocessing, a manifest with checksums, and a MONAI bundle layout (``medseg.exporting.bundle``)."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import shutil
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

import medseg
from medseg.atomic import atomic_target
from medseg.errors import MedsegError
from medseg.exporting.bundle import inference_config, metadata
from medseg.inference.checkpoint import (
    EXPORT_FORMAT, EXPORT_MANIFEST, EXPORT_ONNX, EXPORT_RECIPE, EXPORT_TORCHSCRIPT, EXPORT_VERSION, TrainedModel, file_sha256, is_export, load_ensemble,
)
from medseg.model.runtimes import MeanOfModels
from medseg.inference.postprocessing import Postprocessing, postprocessing_beside
from medseg.option_values import POSTPROCESSING_FILE

__all__ = ["ExportResult", "export_model"]

BUNDLE_METADATA = "configs/metadata.json"
BUNDLE_INFERENCE = "configs/inference.json"
# The ONNX input and output names; the batch axis is dynamic, the window's spatial shape is the recipe's patch (the
# sliding window runs outside the network, as medseg.infer and MONAI's inferers run it)
ONNX_INPUT, ONNX_OUTPUT = "image", "logits"
# The ONNX exporter's loggers: its optimiser's passes log at INFO, and it warns that torchvision's operators are absent
EXPORTER_LOGGERS = ("onnx_ir", "onnxscript", "torch.onnx")


@dataclass(frozen=True)
class ExportResult:
    """Where the export was written, and its manifest."""

    folder: Path
    manifest: dict[str, Any]


def export_model(sources: Sequence[str | Path], output: str | Path, postprocessing: bool = True, overwrite: bool = False) -> ExportResult:
    """Return the export of the models ``sources`` name (checkpoints, run folders or a cross-validation folder, as
    ``medseg.infer --checkpoint`` takes them) written to the folder ``output``.

    The folder is written beside ``output`` under a temporary name and renamed into place once complete, so a reader
    never sees half an export; an existing ``output`` is refused unless ``overwrite``. With ``postprocessing``, a
    ``postprocessing.json`` in a source folder is exported and applied by the export's users.
    """
    try:
        import onnxscript  # noqa: F401  (the dynamo exporter needs it)
    except ImportError:
        raise MedsegError('the ONNX export needs onnx and onnxscript: pip install "medseg[export]"') from None
    output = Path(output).absolute()
    if output.exists() and not overwrite:
        raise MedsegError(f"{output} exists; choose another --output or pass --overwrite")
    sources = [Path(source) for source in sources]
    for source in sources:
        if is_export(source):
            raise MedsegError(f"{source} is an export already; export from its checkpoints")
    models = load_ensemble(sources)
    decision = postprocessing_beside(sources) if postprocessing else None
    if decision:
        decision[0].check_classes(models[0].recipe.class_names, decision[1])
    network = models[0].network if len(models) == 1 else MeanOfModels([model.network for model in models]).eval()
    output.parent.mkdir(parents=True, exist_ok=True)
    with atomic_target(output) as staged:  # an empty file beside OUTPUT: it becomes the staging folder
        staged.unlink()
        staged.mkdir()
        try:
            manifest = write_export(staged, output, network, models, decision[0] if decision else None)
            if output.exists():
                shutil.rmtree(output)
        except BaseException:
            shutil.rmtree(staged, ignore_errors=True)
            raise
    return ExportResult(output, manifest)


def write_export(folder: Path, final: Path, network: nn.Module, models: Sequence[TrainedModel], postprocessing: Postprocessing | None) -> dict[str, Any]:
    """Write the export's files into ``folder`` (to be renamed ``final``) and return the manifest written last."""
    recipe = models[0].recipe
    example = torch.zeros(1, recipe.in_channels, *recipe.patch_size)
    (folder / "models").mkdir()
    (folder / "configs").mkdir()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporters' notes on their own internals
        torch.jit.trace(network, example, check_trace=False).save(str(folder / EXPORT_TORCHSCRIPT))
        opset = write_onnx(network, example, folder / EXPORT_ONNX)
    write_json(folder / EXPORT_RECIPE, recipe.to_dict())
    if postprocessing is not None:
        write_json(folder / POSTPROCESSING_FILE, postprocessing.to_dict())
    sources = ", ".join(str(model.source) for model in models)
    write_json(folder / BUNDLE_METADATA, metadata(recipe, f"{recipe.network} exported by medseg from {sources}"))
    write_json(folder / BUNDLE_INFERENCE, inference_config(recipe, postprocessing, str(final)))
    files = sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file())
    manifest = {
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "medseg_version": medseg.__version__,
        "torch_version": torch.__version__,
        "onnx_opset": opset,
        "onnx_input": {"name": ONNX_INPUT, "shape": ["batch", recipe.in_channels, *recipe.patch_size], "dtype": "float32"},
        "onnx_output": {"name": ONNX_OUTPUT, "shape": ["batch", recipe.out_channels, *recipe.patch_size], "dtype": "float32"},
        "models": [{"checkpoint": str(Path(model.source).absolute()), "sha256": file_sha256(Path(model.source))} for model in models],
        "default_runtime": "torch",
        "default_precision": recipe.precision,
        "files": {name: file_sha256(folder / name) for name in files},
    }
    write_json(folder / EXPORT_MANIFEST, manifest)
    return manifest


def write_onnx(network: nn.Module, example: torch.Tensor, path: Path) -> int:
    """Write ``network`` as ONNX (dynamo exporter; dynamic batch, the patch's spatial shape) and return its opset."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    with contextlib.redirect_stdout(io.StringIO()), quiet_loggers(EXPORTER_LOGGERS):  # the exporter's progress lines and notes
        program = torch.onnx.export(network, (example,), dynamo=True, input_names=[ONNX_INPUT], output_names=[ONNX_OUTPUT],
                                    dynamic_shapes=({0: batch},), verbose=False)
    program.save(str(path))
    return int(next(entry.version for entry in program.model_proto.opset_import if entry.domain in ("", "ai.onnx")))


@contextlib.contextmanager
def quiet_loggers(names: Sequence[str]) -> Iterator[None]:
    """Show only errors of the loggers ``names`` while the block runs."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


