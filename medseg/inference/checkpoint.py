"""Weights-only checkpoint loading: the network and its preprocessing rebuilt from plain data alone."""

from __future__ import annotations

import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medseg.data.transforms import Preprocessing
from medseg.errors import MedsegError
from medseg.model.module import CHECKPOINT_FORMAT_VERSION
from medseg.model.networks import build_network

WEIGHTS_PREFIX = "net."


@dataclass(frozen=True)
class TrainedModel:
    """A network in eval mode plus everything inference needs to feed it and name its outputs."""

    network: nn.Module
    preprocessing: Preprocessing
    patch_size: tuple[int, int, int]
    class_names: tuple[str, ...]
    channel_names: tuple[str, ...]
    source: Path

    @property
    def in_channels(self) -> int:
        return len(self.channel_names)

    @property
    def out_channels(self) -> int:
        return len(self.class_names)


def _read_weights_only(path: Path) -> dict[str, Any]:
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
        raise MedsegError(f"checkpoint {path} is not a readable PyTorch checkpoint: {err}") from None


def load_trained_model(path: str | Path, device: str | torch.device = "cpu") -> TrainedModel:
    """Return the trained network (eval mode, on `device`) and its preprocessing from a medseg checkpoint.

    The checkpoint must hold ``state_dict`` (network weights prefixed ``net.``) and ``medseg``
    (plain hyper-parameters), so no config file is needed at inference.
    """
    path = Path(path)
    ckpt = _read_weights_only(path)
    meta = ckpt.get("medseg") if isinstance(ckpt, dict) else None
    if not isinstance(meta, dict) or "state_dict" not in ckpt:
        raise MedsegError(f"checkpoint {path} is not a medseg checkpoint (no 'medseg' hyper-parameters or 'state_dict')")
    if meta.get("format_version") != CHECKPOINT_FORMAT_VERSION:
        raise MedsegError(f"checkpoint {path} has format_version {meta.get('format_version')!r}; this medseg reads {CHECKPOINT_FORMAT_VERSION}")
    try:
        network = build_network(meta["network"], meta["in_channels"], meta["out_channels"], **meta.get("network_kwargs", {}))
        preprocessing = Preprocessing.from_dict(meta["preprocessing"])
        patch_size = tuple(int(v) for v in meta["patch_size"])
        class_names = tuple(str(v) for v in meta["class_names"])
        channel_names = tuple(str(v) for v in meta["channel_names"])
    except KeyError as err:
        raise MedsegError(f"checkpoint {path} lacks the hyper-parameter {err.args[0]!r}") from None
    if len(class_names) != meta["out_channels"] or len(channel_names) != meta["in_channels"]:
        raise MedsegError(f"checkpoint {path} names {len(class_names)} classes and {len(channel_names)} channels "
                          f"but its network has {meta['out_channels']} outputs and {meta['in_channels']} inputs")
    if len(patch_size) != 3:
        raise MedsegError(f"checkpoint {path} has patch_size {list(patch_size)}; expected three sizes")
    weights = {k[len(WEIGHTS_PREFIX):]: v for k, v in ckpt["state_dict"].items() if k.startswith(WEIGHTS_PREFIX)}
    try:
        network.load_state_dict(weights, strict=True)
    except RuntimeError as err:
        detail = " ".join(line.strip() for line in str(err).splitlines()[1:3])[:200]
        raise MedsegError(f"checkpoint {path} weights do not fit its {meta['network']} network (a different model?): {detail}") from None
    network.to(device).eval()
    return TrainedModel(network, preprocessing, patch_size, class_names, channel_names, path)
