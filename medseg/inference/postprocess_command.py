"""``python -m medseg.postprocess``: choose postprocessing on cross-validation predictions, as nnU-Net does.

Reads the pooled validation predictions of every fold (label maps on the scans' own grids) and their ground
truth, then tries "keep only the largest connected component": first of all foreground together, then of each
class on top of what was kept. A step is kept only if it raises the mean foreground Dice over the cases and lowers
no class's Dice. The decision is written as ``postprocessing.json`` (default: beside the predictions); put it in the
folder of the models (``medseg.infer --checkpoint FOLDER`` applies it from there).

Example:
    python -m medseg.postprocess --pred runs/cv/validation --gt data/Task09_Spleen --output runs/cv/postprocessing.json
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from medseg.atomic import write_text_atomic
from medseg.command_line import CommandParser
from medseg.errors import MedsegError, run_command
from medseg.evaluate import dice_per_class, mean_over_cases, paired_files, read_label_pair
from medseg.option_values import POSTPROCESSING_FILE

if TYPE_CHECKING:
    from medseg.inference.postprocessing import Postprocessing

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
    # torch and MONAI load here, not at the top, so that --help answers without them
    from medseg.inference.postprocessing import Postprocessing

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


def postprocess(argv: Sequence[str]) -> None:
    """Choose postprocessing as the options say, print the decision and write it."""
    parser = CommandParser("python -m medseg.postprocess", __doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pred", required=True, help="folder of the folds' validation predictions (<case>.nii.gz)")
    parser.add_argument("--gt", required=True, help="folder of ground-truth label maps with the same names, or the dataset")
    parser.add_argument("-o", "--output", default=None, help=f"decision file (default: PRED/{POSTPROCESSING_FILE})")
    args = parser.parse_args(argv)
    pairs, class_names = paired_files(args.pred, args.gt)
    cases = [read_label_pair(prediction, truth)[:2] for prediction, truth in pairs]
    if len(class_names) < 2:
        raise MedsegError(f"no class names for {args.gt}: give the dataset (its dataset.json names the classes)")
    chosen = choose_postprocessing(cases, class_names)
    output = Path(args.output) if args.output else Path(args.pred) / POSTPROCESSING_FILE
    write_text_atomic(output, json.dumps(chosen.to_dict(), indent=2))
    print(chosen.describe())
    for name in class_names[1:]:
        print(f"{name}: Dice {chosen.chosen_on['dice_before'][name]} -> {chosen.chosen_on['dice_after'][name]} over {len(cases)} cases")
    print(f"saved {output}")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: return the exit code: 0, or 1 after a one-line error (``run_command``)."""
    return run_command(postprocess, argv)


if __name__ == "__main__":
    sys.exit(main())
