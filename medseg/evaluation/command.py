"""``python -m medseg.evaluate``: Dice and HD95 (mm) per class between predicted and ground-truth label maps."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from medseg.atomic import write_text_atomic
from medseg.command_line import CommandParser
from medseg.errors import run_command
from medseg.evaluation.metrics import evaluate


def score(argv: Sequence[str]) -> None:
    """Score the predictions the options name, print the summary and write the per-case CSV."""
    parser = CommandParser("python -m medseg.evaluate", __doc__.split(":", 1)[1].strip())
    parser.add_argument("--pred", required=True, help="folder of predicted label maps (<case>.nii.gz)")
    parser.add_argument("--gt", required=True, help="folder of ground-truth label maps with the same names, or a dataset (folder or dataset.json)")
    parser.add_argument("-o", "--output", default=None, help="per-case CSV (default: PRED/evaluation.csv)")
    args = parser.parse_args(argv)
    result = evaluate(args.pred, args.gt)
    output = Path(args.output) if args.output else Path(args.pred) / "evaluation.csv"
    write_text_atomic(output, result.csv_text())
    for line in result.summary_lines():
        print(line)
    print(f"per-case scores: {output}")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: return the exit code: 0, or 1 after a one-line error (``run_command``)."""
    return run_command(score, argv)

