"""Weights-only checkpoint loading: the network rebuilt from the checkpoint's recipe alone."""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
import warnings
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medseg.errors import MedsegError
from medseg.model.networks import network_for
from medseg.model.runtimes import MeanOfModels
from medseg.recipe import Recipe

log = logging.getLogger(__name__)

WEIGHTS_PREFIX = "net."
# The checkpoint each training run folder contributes to an ensemble (ModelCheckpoint's name for the best one).
BEST_CHECKPOINT_GLOB = "best-*.ckpt"
LAST_CHECKPOINT = "last.ckpt"  # the run's final weights: the one file of its newest state (training's last_checkpoint)
# What the members of an ensemble must share: windows of one shape on one preprocessed image, read out as one set of classes.
ENSEMBLE_FIELDS = ("channel_names", "class_names", "patch_size", "preprocessing")
# An export folder (python -m medseg.export): its manifest names the files, checksums and the default runtime
EXPORT_FORMAT, EXPORT_VERSION = "medseg-export", 1
EXPORT_MANIFEST = "manifest.json"
EXPORT_RECIPE = "recipe.json"
EXPORT_TORCHSCRIPT = "models/model.ts"  # the network (an ensemble's mean of logits) as TorchScript, as MONAI bundles load it
EXPORT_ONNX = "models/model.onnx"
# torch 2.10+ calls TorchScript deprecated; MONAI bundles (and so MONAI Deploy and MONAI Label) still load it
TORCHSCRIPT_DEPRECATED = r"`torch\.jit\.(load|trace)` is deprecated"


@dataclass(frozen=True)
class TrainedModel:
    """A network in eval mode, the recipe it was trained with, and the checkpoint it came from."""

    recipe: Recipe
    network: nn.Module
    source: Path
    runtime: str = "torch"  # what runs it unless told otherwise: an export's recorded choice


def read_weights_only(path: Path) -> dict[str, Any]:
    """Return the checkpoint's contents, refusing anything that would need pickle's code execution."""
    if not path.is_file():
        raise MedsegError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise MedsegError(
            f"checkpoint {path} needs unsafe (arbitrary code) loading and is refused: {reason}; "
            "re-save it with plain-data hyper-parameters"
        ) from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile) as err:
        reason = str(err).strip() or f"{type(err).__name__} after {path.stat().st_size} bytes"  # EOFError has no message
        raise MedsegError(f"checkpoint {path} is not a readable PyTorch checkpoint: {reason}") from None


def load_trained_model(path: str | Path, device: str | torch.device = "cpu") -> TrainedModel:
    """Return the trained network (eval mode, on `device`) and its recipe from a medseg checkpoint.

    The checkpoint must hold ``state_dict`` (network weights prefixed ``net.``) and ``medseg`` (the recipe
    as plain data), so no config file is needed at inference. Checkpoints of medseg 0.1 (recipe version 1,
    without precision and window settings) read as fp32 with default windows.
    """
    path = Path(path)
    ckpt = read_weights_only(path)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("medseg"), dict) or "state_dict" not in ckpt:
        raise MedsegError(f"checkpoint {path} is not a medseg checkpoint (no 'medseg' recipe or 'state_dict')")
    recipe = Recipe.from_dict(ckpt["medseg"], source=f"checkpoint {path}")
    network = network_for(recipe)
    weights = {k[len(WEIGHTS_PREFIX):]: v for k, v in ckpt["state_dict"].items() if k.startswith(WEIGHTS_PREFIX)}
    try:
        network.load_state_dict(weights, strict=True)
    except RuntimeError as err:
        detail = " ".join(line.strip() for line in str(err).splitlines()[1:3])[:200]
        raise MedsegError(f"checkpoint {path} weights do not fit its {recipe.network} network (a different model?): {detail}") from None
    network.to(device).eval()
    return TrainedModel(recipe, network, path)


def is_export(path: Path) -> bool:
    """Return whether ``path`` is an export folder (python -m medseg.export)."""
    return path.is_dir() and (path / EXPORT_MANIFEST).is_file()


def file_sha256(path: Path) -> str:
    """Return the SHA-256 of a file's bytes, as hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(folder: Path) -> dict[str, Any]:
    """Return an export folder's manifest, its files checked against their checksums (one line naming a changed file)."""
    path = folder / EXPORT_MANIFEST
    try:
        manifest = json.loads(path.read_text())
        if manifest.get("format") != EXPORT_FORMAT or manifest.get("version") != EXPORT_VERSION:
            raise MedsegError(f"{path} is not a medseg export of version {EXPORT_VERSION}; export the model again with this medseg")
        files = dict(manifest["files"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
        raise MedsegError(f"{path}: not a medseg export manifest ({type(err).__name__}: {err})") from None
    for name, checksum in files.items():
        try:
            found = file_sha256(folder / name)
        except OSError:
            raise MedsegError(f"{folder / name} is missing from the export; export the model again") from None
        if found != checksum:
            raise MedsegError(f"{folder / name} does not match its checksum in {path} (changed or damaged); export the model again")
    return manifest


def load_export(folder: str | Path, device: str | torch.device = "cpu") -> TrainedModel:
    """Return the exported network and its recipe: the recipe's network (for an ensemble, the mean of its members'
    logits) in PyTorch, with the weights of the export's TorchScript program.

    PyTorch runs it as it runs a checkpoint (channels-last, oneDNN): faster on CPUs than the TorchScript program itself
    (benchmarks/results/export_runtimes/).
    """
    folder = Path(folder)
    manifest = read_manifest(folder)
    recipe_file = folder / EXPORT_RECIPE
    recipe = Recipe.from_dict(json.loads(recipe_file.read_text()), source=recipe_file)
    # the precision it runs at by default: the trained one, or the one medseg.export --check chose
    recipe = recipe.with_changes(precision=str(manifest.get("default_precision", recipe.precision)))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=TORCHSCRIPT_DEPRECATED, category=DeprecationWarning)
        weights = torch.jit.load(str(folder / EXPORT_TORCHSCRIPT), map_location="cpu").state_dict()
    members = len(manifest.get("models", [])) or 1
    network = network_for(recipe) if members == 1 else MeanOfModels([network_for(recipe) for _ in range(members)])
    network.load_state_dict(weights, strict=True)
    return TrainedModel(recipe, network.to(device).eval(), folder, str(manifest.get("default_runtime", "torch")))


def checkpoint_paths(sources: Sequence[str | Path]) -> list[Path]:
    """Return the checkpoints ``sources`` name: files as given, and for a folder (a run, or a cross-validation folder
    of runs) the best checkpoint of every run in it, in path order. A run that never validated during training (shorter
    than its validation interval) has no best checkpoint: its last.ckpt, which its final validation scored, stands in."""
    paths: list[Path] = []
    for source in map(Path, sources):
        if not source.is_dir():
            paths.append(source)
            continue
        runs = sorted({path.parent for pattern in (BEST_CHECKPOINT_GLOB, LAST_CHECKPOINT) for path in source.rglob(pattern)})
        if not runs:
            raise MedsegError(f"{source} holds no checkpoint of a training run ({BEST_CHECKPOINT_GLOB} or {LAST_CHECKPOINT})")
        for run in runs:
            best = sorted(run.glob(BEST_CHECKPOINT_GLOB))
            if not best:
                log.warning(f"{run}: no best checkpoint (no validation ran during training): its {LAST_CHECKPOINT} is used")
            paths += best or [run / LAST_CHECKPOINT]
    return paths


def load_ensemble(sources: Sequence[str | Path], device: str | torch.device = "cpu") -> list[TrainedModel]:
    """Return the models ``sources`` name (checkpoint files or folders, see ``checkpoint_paths``, or one export folder), checked to share
    their recipe's channels, classes, patch and preprocessing; a disagreement is a one-line error naming the field."""
    exports = [Path(source) for source in sources if is_export(Path(source))]
    if exports:
        if len(sources) > 1:
            raise MedsegError(f"{exports[0]} is an export folder: give it alone (an ensemble is exported as one folder)")
        return [load_export(exports[0], device)]
    models = [load_trained_model(path, device) for path in checkpoint_paths(sources)]
    first = models[0]
    for other in models[1:]:
        for name in ENSEMBLE_FIELDS:
            mine, theirs = getattr(first.recipe, name), getattr(other.recipe, name)
            if mine != theirs:
                shown = (mine.to_dict(), theirs.to_dict()) if hasattr(mine, "to_dict") else (list(mine), list(theirs))
                raise MedsegError(
                    f"checkpoints {first.source} and {other.source} differ in {name} ({shown[0]} against {shown[1]}): "
                    "an ensemble's models must share it"
                )
    return models
