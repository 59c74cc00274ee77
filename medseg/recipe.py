"""The recipe: what training decided, as one plain record written into every checkpoint.

Inference, evaluation, the memory planner and the notebooks read it and decide none of it again
(nnU-Net's plans.json, nanoGPT's ``model_args``). It holds plain data only, so checkpoints load
with ``torch.load(weights_only=True)``. The settings records training is configured with live here too, each the one
home of its defaults: ``Window`` and ``OptimizerSettings`` (both also in the recipe; the optimizer is training's and
the planner's trial steps').
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from medseg.data.transforms import Preprocessing
from medseg.errors import MedsegError
from medseg.precision import check_precision

__all__ = ["NNUNET_OPTIMIZER", "OPTIMIZERS", "RECIPE_VERSION", "OptimizerSettings", "Recipe", "Window"]

RECIPE_VERSION = 2


@dataclass(frozen=True)
class Window:
    """Sliding-window settings shared by validation and inference.

    Attributes:
        overlap: fraction of a window shared with its neighbours, in [0, 1).
        gaussian: weight window centres more than edges when blending (MONAI ``mode="gaussian"``).
        batch_size: windows per forward pass (the memory planner's forward-only size when it ran).
    """

    overlap: float = 0.25
    gaussian: bool = True
    batch_size: int = 4

    def __post_init__(self) -> None:
        if not 0.0 <= self.overlap < 1.0:
            raise MedsegError(f"window overlap must be in [0, 1), got {self.overlap}")
        if self.batch_size < 1:
            raise MedsegError(f"window batch size must be at least 1, got {self.batch_size}")


OPTIMIZERS = ("adamw", "sgd")


@dataclass(frozen=True)
class OptimizerSettings:
    """The optimizer's settings, the one home of their defaults: training steps with them and the planner's trials too.

    Attributes:
        name: "adamw" (AdamW, decoupled weight decay) or "sgd" (SGD, nnU-Net's, with ``momentum`` and ``nesterov``).
        learning_rate: the starting rate (training decays it polynomially, power 0.9, to zero).
        weight_decay: AdamW's decoupled weight decay, or SGD's L2 penalty.
        momentum: SGD's momentum (AdamW has its own moments and ignores it).
        nesterov: SGD with Nesterov momentum.
    """

    name: str = "adamw"
    learning_rate: float = 3e-3
    weight_decay: float = 1e-5
    momentum: float = 0.0
    nesterov: bool = False

    def __post_init__(self) -> None:
        if self.name not in OPTIMIZERS:
            raise MedsegError(f"unknown optimizer {self.name!r}: choose one of {', '.join(OPTIMIZERS)}")
        if self.nesterov and (self.name != "sgd" or self.momentum <= 0):
            raise MedsegError(f"Nesterov momentum needs the sgd optimizer and a momentum above 0, got {self.name} with momentum {self.momentum}")


# nnU-Net's training recipe (nnUNetTrainer): SGD with Nesterov momentum 0.99, rate 0.01 decayed polynomially, weight decay 3e-5
NNUNET_OPTIMIZER = OptimizerSettings(name="sgd", learning_rate=0.01, weight_decay=3e-5, momentum=0.99, nesterov=True)


@dataclass(frozen=True)
class Recipe:
    """Network, names, patch, preprocessing, the precision that ran and the window settings of a trained model.

    Attributes:
        network: MONAI network name ("UNet", "DynUNet", "SegResNet").
        network_kwargs: the network class's own arguments (a DynUNet's ``deep_supervision`` and ``deep_supr_num`` say
            whether training supervised its lower decoder stages; inference uses the top output either way).
        channel_names: image channels in order (their count is the network's input channels).
        class_names: classes by label value, background first (their count is the network's outputs).
        patch_size: training patch, also the sliding window, in voxels after preprocessing.
        preprocessing: how a scan is brought into the network's space.
        precision: the precision training ran at ("32-true", "16-mixed", "bf16-mixed").
        window: sliding-window settings.
        batch_size: training patches per step on each rank (None: not trained yet, or a record from before it was kept).
        accumulate_grad_batches: steps whose gradients make up one optimizer step.
        optimizer: the optimizer training steps with (and the planner's trial steps, so that its state is counted).
    """

    network: str
    network_kwargs: dict[str, Any]
    channel_names: tuple[str, ...]
    class_names: tuple[str, ...]
    patch_size: tuple[int, int, int]
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    precision: str = "32-true"
    window: Window = field(default_factory=Window)
    batch_size: int | None = None
    accumulate_grad_batches: int = 1
    optimizer: OptimizerSettings = field(default_factory=OptimizerSettings)

    def __post_init__(self) -> None:
        check_precision(self.precision)
        if len(self.patch_size) != 3 or min(self.patch_size) < 1:
            raise MedsegError(f"patch_size must be three positive integers, got {list(self.patch_size)}")
        if len(self.class_names) < 2 or not self.channel_names:
            raise MedsegError(f"a recipe needs at least one channel and two classes, got {list(self.channel_names)} and {list(self.class_names)}")

    @property
    def in_channels(self) -> int:
        return len(self.channel_names)

    @property
    def out_channels(self) -> int:
        return len(self.class_names)

    def with_changes(self, **changes: Any) -> Recipe:
        """Return a copy with ``changes``; ``window`` may be given as a dict of the fields that change."""
        if isinstance(changes.get("window"), dict):
            changes["window"] = replace(self.window, **changes["window"])
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (lists, not tuples) for checkpoints, JSON and YAML."""
        return {
            "version": RECIPE_VERSION,
            "network": self.network,
            "network_kwargs": dict(self.network_kwargs),
            "channel_names": list(self.channel_names),
            "class_names": list(self.class_names),
            "patch_size": list(self.patch_size),
            "preprocessing": self.preprocessing.to_dict(),
            "precision": self.precision,
            "window": asdict(self.window),
            "batch_size": self.batch_size,
            "accumulate_grad_batches": self.accumulate_grad_batches,
            "optimizer": asdict(self.optimizer),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str | Path = "recipe") -> Recipe:
        """Return the recipe in ``data``; a version-1 checkpoint's record (no precision, no window) reads as fp32 with
        default windows, and a record without an optimizer as one trained with the default AdamW."""
        if not isinstance(data, dict):
            raise MedsegError(f"{source}: the recipe is not a mapping")
        version = data.get("version", data.get("format_version"))
        if version not in (1, RECIPE_VERSION):
            raise MedsegError(f"{source}: recipe version {version!r} is not one this medseg reads (1 or {RECIPE_VERSION}); upgrade medseg")
        try:
            recipe = cls(
                network=str(data["network"]),
                network_kwargs=dict(data.get("network_kwargs") or {}),
                channel_names=tuple(str(v) for v in data["channel_names"]),
                class_names=tuple(str(v) for v in data["class_names"]),
                patch_size=tuple(int(v) for v in data["patch_size"]),
                preprocessing=Preprocessing.from_dict(data["preprocessing"]),
                precision=str(data.get("precision", "32-true")),
                window=Window(**data.get("window", {})),
                batch_size=None if data.get("batch_size") is None else int(data["batch_size"]),
                accumulate_grad_batches=int(data.get("accumulate_grad_batches", 1)),
                optimizer=OptimizerSettings(**data.get("optimizer", {})),
            )
        except KeyError as err:
            raise MedsegError(f"{source}: the recipe lacks {err.args[0]!r}") from None
        except (TypeError, ValueError) as err:
            raise MedsegError(f"{source}: bad recipe ({err})") from None
        declared = {"in_channels": recipe.in_channels, "out_channels": recipe.out_channels}
        for key, count in declared.items():
            if key in data and data[key] != count:
                raise MedsegError(f"{source}: the recipe names {count} for {key} but its network has {data[key]}")
        return recipe
