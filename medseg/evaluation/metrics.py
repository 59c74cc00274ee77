"""Dice and HD95 (mm) per class between predicted and ground-truth label maps (``python -m medseg.evaluate``), and
the one mean over cases that evaluation, cross-validation and postprocessing report."""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import nibabel as nib
import numpy as np

from medseg.data.formats import is_dataset, read_dataset
from medseg.errors import MedsegError
from medseg.io.nifti import case_name, is_nifti, read_voxels, same_grid

# torch and MONAI, and the medseg modules that load them, are imported inside the functions that use them, so that
# --help answers without loading them
if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class CaseScores:
    """One case's scores per foreground class (index 0 is label 1); NaN where a score is undefined."""

    name: str
    dice: tuple[float, ...]
    hd95_mm: tuple[float, ...]


def mean_over_cases(scores: Sequence[Sequence[float]], classes: int) -> np.ndarray:
    """Return each class's mean score over the cases where it is defined (finite), NaN for a class defined in none.

    ``scores`` holds one row per case, a score per class; a row shorter than ``classes`` lacks the classes after it.
    This is the one "mean Dice over cases": evaluation, cross-validation and postprocessing all report it.
    """
    table = np.full((len(scores), classes), math.nan)
    for row, case in zip(table, scores):
        row[: min(len(case), classes)] = case[:classes]
    defined = np.isfinite(table)
    counts = defined.sum(axis=0)
    sums = np.where(defined, table, 0.0).sum(axis=0)
    return np.divide(sums, counts, out=np.full(classes, math.nan), where=counts > 0)


@dataclass(frozen=True)
class Evaluation:
    """Every case's scores plus the class names (background excluded) they refer to."""

    cases: list[CaseScores]
    class_names: list[str]

    def column(self, metric: str, index: int) -> np.ndarray:
        """Return one class's scores over the cases, NaN where the class was absent or undefined."""
        return np.array([getattr(case, metric)[index] if index < len(getattr(case, metric)) else math.nan for case in self.cases])

    def class_means(self, metric: str) -> dict[str, float]:
        """Return each class's mean ``metric`` ("dice" or "hd95_mm") over the cases where it is defined (NaN if none)."""
        means = mean_over_cases([getattr(case, metric) for case in self.cases], len(self.class_names))
        return dict(zip(self.class_names, map(float, means)))

    def summary_lines(self) -> list[str]:
        """Return one line per class: mean and standard deviation over the cases where each score is defined."""
        lines = [f"{len(self.cases)} cases; mean +- std over cases where the score is defined (n)"]
        for index, name in enumerate(self.class_names):
            parts = []
            for metric, label, unit in (("dice", "Dice", ""), ("hd95_mm", "HD95", " mm")):
                values = self.column(metric, index)
                values = values[np.isfinite(values)]
                text = f"{values.mean():.4f} +- {values.std():.4f}{unit} (n={values.size})" if values.size else "undefined (n=0)"
                parts.append(f"{label} {text}")
            lines.append(f"{name}: " + ", ".join(parts))
        return lines

    def csv_text(self) -> str:
        """Return the per-case table: case, then dice_<class> and hd95_mm_<class> columns."""
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["case"] + [f"dice_{n}" for n in self.class_names] + [f"hd95_mm_{n}" for n in self.class_names])
        padding = [math.nan] * len(self.class_names)
        for case in self.cases:
            dice = (list(case.dice) + padding)[: len(padding)]
            hd95 = (list(case.hd95_mm) + padding)[: len(padding)]
            writer.writerow([case.name] + [f"{v:.6g}" for v in dice + hd95])
        return buffer.getvalue()


def _labels(path: Path) -> tuple[nib.Nifti1Image, np.ndarray, tuple[float, float, float]]:
    """Return the label map's image (header), its integer voxels (X, Y, Z) and its voxel spacing in mm."""
    image, voxels = read_voxels(path)
    if voxels.ndim == 4 and voxels.shape[3] == 1:
        voxels = voxels[..., 0]
    if voxels.ndim != 3:
        raise MedsegError(f"{path} has shape {list(voxels.shape)}; a label map must be 3D")
    spacing = tuple(float(z) for z in image.header.get_zooms()[:3])
    return image, np.rint(voxels).astype(np.int64), spacing


def read_label_pair(prediction: Path, ground_truth: Path) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """Return the predicted and true label maps (X, Y, Z) and the truth's voxel spacing, refusing grids that differ."""
    pred_image, pred, _ = _labels(prediction)
    truth_image, truth, spacing = _labels(ground_truth)
    if pred.shape != truth.shape or not same_grid(pred_image, truth_image):
        raise MedsegError(
            f"prediction {prediction} (shape {list(pred.shape)}) and ground truth {ground_truth} "
            f"(shape {list(truth.shape)}) differ in voxel grid (shape or affine); resample neither silently"
        )
    if pred.min() < 0 or truth.min() < 0:
        raise MedsegError(f"negative label in {prediction if pred.min() < 0 else ground_truth}")
    return pred, truth, spacing


def _one_hot_pair(pred: np.ndarray, truth: np.ndarray, classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    import torch
    from monai.networks.utils import one_hot

    return one_hot(torch.from_numpy(pred)[None, None], classes), one_hot(torch.from_numpy(truth)[None, None], classes)


def dice_per_class(pred: np.ndarray, truth: np.ndarray, classes: int) -> tuple[float, ...]:
    """Return Dice of foreground classes 1..classes-1: 0 for a class in only one of the maps, NaN for one in neither."""
    return _dice(*_one_hot_pair(pred, truth, classes))


def _dice(pred_hot: torch.Tensor, truth_hot: torch.Tensor) -> tuple[float, ...]:
    from monai.metrics import DiceMetric

    dice = DiceMetric(include_background=False, reduction="none", ignore_empty=False)(pred_hot, truth_hot)[0]
    both_empty = (pred_hot[0, 1:].sum(dim=(1, 2, 3)) == 0) & (truth_hot[0, 1:].sum(dim=(1, 2, 3)) == 0)
    dice[both_empty] = math.nan
    return tuple(dice.tolist())


def score_case(prediction: Path, ground_truth: Path) -> CaseScores:
    """Return Dice and HD95 (mm, using the ground truth's voxel spacing) per foreground class.

    Dice is 0 for a class predicted but absent from the ground truth (or the reverse) and NaN when
    the class is absent from both; HD95 is NaN unless the class is in both.
    """
    from monai.metrics import HausdorffDistanceMetric

    pred, truth, spacing = read_label_pair(prediction, ground_truth)
    classes = int(max(pred.max(), truth.max())) + 1
    if classes < 2:
        return CaseScores(case_name(prediction), (), ())
    pred_hot, truth_hot = _one_hot_pair(pred, truth, classes)
    hd95 = HausdorffDistanceMetric(include_background=False, percentile=95, reduction="none")(pred_hot, truth_hot, spacing=list(spacing))[0]
    return CaseScores(case_name(prediction), _dice(pred_hot, truth_hot), tuple(hd95.tolist()))


def _ground_truth(source: Path) -> tuple[dict[str, Path], list[str]]:
    """Return ground-truth label files by case name, and the class names when a dataset declares them."""
    if is_dataset(source):
        spec = read_dataset(source)
        return {case.name: case.label for case in spec.cases}, list(spec.class_names)
    return {case_name(p): p for p in sorted(source.iterdir()) if is_nifti(p)}, []


def _recipe_class_names(predictions: Path) -> list[str]:
    """Return the class names of the recipe inference wrote beside the predictions, or none."""
    from medseg.inference.runner import RECIPE_FILE
    from medseg.recipe import Recipe

    path = predictions / RECIPE_FILE
    if not path.is_file():
        return []
    try:
        return list(Recipe.from_dict(json.loads(path.read_text()), source=path).class_names)
    except json.JSONDecodeError as err:
        raise MedsegError(f"{path}: not valid JSON ({err})") from None


def paired_files(predictions: str | Path, ground_truth: str | Path) -> tuple[list[tuple[Path, Path]], list[str]]:
    """Return (prediction, ground truth) file pairs for every prediction in the folder ``predictions``, and the class
    names (the dataset's, else those of the recipe inference wrote); a prediction without ground truth is an error."""
    predictions, ground_truth = Path(predictions), Path(ground_truth)
    if not predictions.is_dir():
        raise MedsegError(f"prediction folder {predictions} does not exist")
    if not ground_truth.exists():
        raise MedsegError(f"ground truth {ground_truth} does not exist")
    truths, declared = _ground_truth(ground_truth)
    declared = declared or _recipe_class_names(predictions)
    files = sorted(p for p in predictions.iterdir() if is_nifti(p))
    if not files:
        raise MedsegError(f"{predictions} holds no .nii or .nii.gz predictions")
    missing = [p.name for p in files if case_name(p) not in truths]
    if missing:
        raise MedsegError(f"no ground truth in {ground_truth} for prediction(s) {', '.join(missing[:5])}")
    return [(p, truths[case_name(p)]) for p in files], declared


def evaluate(predictions: str | Path, ground_truth: str | Path) -> Evaluation:
    """Return the scores of every prediction in `predictions` (a folder) that has a ground truth.

    `ground_truth` is a folder of label maps with the same file names, or a dataset (folder or
    dataset.json). Columns are named by the dataset's classes, else by the recipe ``medseg.infer`` wrote
    beside the predictions. A prediction without ground truth is an error, so a typo cannot shrink the test set.
    """
    pairs, declared = paired_files(predictions, ground_truth)
    cases = [score_case(prediction, truth) for prediction, truth in pairs]
    classes = max([len(case.dice) for case in cases] + [len(declared) - 1])
    names = declared + [f"class_{i}" for i in range(len(declared), classes + 1)]
    return Evaluation(cases, names[1 : classes + 1])
