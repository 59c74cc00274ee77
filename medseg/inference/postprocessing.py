"""Postprocessing of label maps, and its choice on cross-validation (``python -m medseg.postprocess``): keep only the
largest connected component of all foreground together and/or of single classes (nnU-Net's rule, MONAI's transform).

The decision is one plain file, ``postprocessing.json``, beside the models it was chosen for; ``medseg.infer``
applies it when it predicts with that folder's models.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.transforms import KeepLargestConnectedComponent

from medseg.errors import MedsegError
from medseg.evaluation.metrics import dice_per_class, mean_over_cases
from medseg.option_values import POSTPROCESSING_FILE

POSTPROCESSING_VERSION = 1


def keep_largest_component(labels: np.ndarray, classes: list[int], together: bool) -> np.ndarray:
    """Return ``labels`` (X, Y, Z) with every voxel of ``classes`` outside their largest connected component set to
    background: one component for all of them when ``together``, else one per class (26-connectivity)."""
    if not classes:
        return labels
    keep = KeepLargestConnectedComponent(applied_labels=classes, is_onehot=False, independent=not together)
    # MONAI clears the removed voxels in place: work on a copy, so the caller's map stays as it was
    return keep(torch.from_numpy(labels.copy())[None])[0].numpy().astype(labels.dtype, copy=False)


@dataclass(frozen=True)
class Postprocessing:
    """Which largest-component steps to apply, for the classes they were chosen on.

    Attributes:
        class_names: the models' classes, background first (a file for other classes is refused).
        foreground_largest_component: keep only the largest component of all foreground classes together.
        largest_component_classes: classes (by name) of which only the largest component is kept, after the above.
        chosen_on: how the decision was made (cases, Dice before and after per class), for the record.
    """

    class_names: tuple[str, ...]
    foreground_largest_component: bool = False
    largest_component_classes: tuple[str, ...] = ()
    chosen_on: dict[str, Any] | None = None

    @property
    def does_anything(self) -> bool:
        return self.foreground_largest_component or bool(self.largest_component_classes)

    def apply(self, labels: np.ndarray) -> np.ndarray:
        """Return the postprocessed label map (X, Y, Z)."""
        if self.foreground_largest_component:
            labels = keep_largest_component(labels, list(range(1, len(self.class_names))), together=True)
        indices = [self.class_names.index(name) for name in self.largest_component_classes]
        return keep_largest_component(labels, indices, together=False)

    def describe(self) -> str:
        """Return one line saying what is applied."""
        steps = (["largest component of all foreground"] if self.foreground_largest_component else []) + [
            f"largest component of {name}" for name in self.largest_component_classes
        ]
        return "postprocessing: " + (", then ".join(steps) if steps else "none (nothing helped on validation)")

    def check_classes(self, class_names: tuple[str, ...], source: Path | str) -> None:
        """Refuse postprocessing chosen for other classes than the models predict (one line naming both)."""
        if tuple(class_names) != self.class_names:
            raise MedsegError(f"{source} was chosen for classes {list(self.class_names)}, but the models predict {list(class_names)}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": POSTPROCESSING_VERSION,
            "class_names": list(self.class_names),
            "foreground_largest_component": self.foreground_largest_component,
            "largest_component_classes": list(self.largest_component_classes),
            "chosen_on": self.chosen_on,
        }

    @classmethod
    def read(cls, path: str | Path) -> Postprocessing:
        """Return the decision in ``path``; anything unreadable is a one-line error naming the file."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
            if data.get("version") != POSTPROCESSING_VERSION:
                raise MedsegError(f"{path}: postprocessing version {data.get('version')!r} is not {POSTPROCESSING_VERSION}; upgrade medseg")
            made = cls(
                tuple(str(name) for name in data["class_names"]),
                bool(data["foreground_largest_component"]),
                tuple(str(name) for name in data["largest_component_classes"]),
                data.get("chosen_on"),
            )
        except (OSError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
            raise MedsegError(f"{path}: not a medseg postprocessing file ({type(err).__name__}: {err})") from None
        unknown = [name for name in made.largest_component_classes if name not in made.class_names[1:]]
        if unknown:
            raise MedsegError(f"{path}: largest_component_classes names {unknown}, which are not foreground classes {list(made.class_names[1:])}")
        return made


LabelPair = tuple[np.ndarray, np.ndarray]


def mean_dice(cases: Sequence[LabelPair], postprocessing: Postprocessing) -> np.ndarray:
    """Return each foreground class's Dice after ``postprocessing``, averaged over the cases where it is defined."""
    classes = len(postprocessing.class_names)
    return mean_over_cases([dice_per_class(postprocessing.apply(pred), truth, classes) for pred, truth in cases], classes - 1)


def improves(candidate: np.ndarray, current: np.ndarray) -> bool:
    """nnU-Net's rule: the mean foreground Dice rises and no class gets worse (classes undefined in both are ignored)."""
    defined = np.isfinite(current) & np.isfinite(candidate)
    return bool(defined.any() and np.mean(candidate[defined]) > np.mean(current[defined]) and np.all(candidate[defined] >= current[defined]))


def choose_postprocessing(cases: Sequence[LabelPair], class_names: Sequence[str]) -> Postprocessing:
    """Return the postprocessing nnU-Net's rule chooses for (prediction, truth) label maps of ``class_names``: all
    foreground's largest component first (with two or more foreground classes), then each class's, each step kept
    only where it ``improves`` on what was kept before."""
    current = Postprocessing(tuple(class_names))
    before = scores = mean_dice(cases, current)
    steps = [lambda chosen: replace(chosen, foreground_largest_component=True)] if len(class_names) > 2 else []
    steps += [lambda chosen, name=name: replace(chosen, largest_component_classes=(*chosen.largest_component_classes, name)) for name in class_names[1:]]
    for step in steps:
        candidate = step(current)
        candidate_scores = mean_dice(cases, candidate)
        if improves(candidate_scores, scores):
            current, scores = candidate, candidate_scores
    chosen_on = {
        "cases": len(cases),
        "dice_before": dict(zip(class_names[1:], map(_plain, before))),
        "dice_after": dict(zip(class_names[1:], map(_plain, scores))),
    }
    return replace(current, chosen_on=chosen_on)


def _plain(value: float) -> float | None:
    return None if np.isnan(value) else round(float(value), 6)


def postprocessing_beside(sources: list[Path]) -> tuple[Postprocessing, Path] | None:
    """Return the decision (and its file) in the model folders among ``sources``, or None where there is none;
    two folders with their own decisions are refused, since neither was chosen for the models of both."""
    found = [source / POSTPROCESSING_FILE for source in sources if (source / POSTPROCESSING_FILE).is_file()]
    if len(found) > 1:
        raise MedsegError(f"{found[0]} and {found[1]} were each chosen for other models; ensemble one folder, or pass --no_postprocessing")
    return (Postprocessing.read(found[0]), found[0]) if found else None
