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
from collections.abc import Sequence
from pathlib import Path

from medseg.atomic import write_text_atomic
from medseg.command_line import CommandParser
from medseg.errors import MedsegError, run_command
from medseg.evaluation.metrics import paired_files, read_label_pair
from medseg.option_values import POSTPROCESSING_FILE


def postprocess(argv: Sequence[str]) -> None:
    """Choose postprocessing as the options say, print the decision and write it."""
    parser = CommandParser("python -m medseg.postprocess", __doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pred", required=True, help="folder of the folds' validation predictions (<case>.nii.gz)")
    parser.add_argument("--gt", required=True, help="folder of ground-truth label maps with the same names, or the dataset")
    parser.add_argument("-o", "--output", default=None, help=f"decision file (default: PRED/{POSTPROCESSING_FILE})")
    args = parser.parse_args(argv)
    # torch and MONAI load here, not at the top, so that --help answers without them
    from medseg.inference.postprocessing import choose_postprocessing

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

