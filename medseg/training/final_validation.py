"""The Dice a training run reports: its validated checkpoint's label maps on the validation scans' own grids, scored as
``medseg.infer`` + ``medseg.evaluate`` score them (nnU-Net's final validation), written to ``<run>/validation/``.

Per-epoch validation (``val_*`` in metrics.csv and the progress bar, which choose the best checkpoint) scores on the
training grid, after resampling to the training spacing; it can differ from this by the resampling. This is the one
a user gets from inference.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medseg.atomic import write_text_atomic
from medseg.data.formats import Case
from medseg.errors import MedsegError
from medseg.evaluation.metrics import Evaluation, score_case
from medseg.inference import InferenceOptions, segment_scans

VALIDATION_FOLDER = "validation"
EVALUATION_FILE = "evaluation.csv"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FinalValidation:
    """A checkpoint's scores on the validation scans' own grids, and the folder holding its label maps and evaluation.csv."""

    checkpoint: Path
    folder: Path
    evaluation: Evaluation

    def dice(self) -> dict[str, float]:
        """Return each foreground class's Dice averaged over the cases where it is defined, and their mean ("mean")."""
        means = self.evaluation.class_means("dice")
        return {**means, "mean": float(np.mean(list(means.values())))}

    def summary_lines(self, validated: str) -> list[str]:
        """Return the lines a run's summary prints: the Dice of ``validated`` (what the checkpoint is) and where it is."""
        dice = self.dice()
        width = max(len(name) for name in dice)
        lines = [f"Validation Dice of {validated}, on the {len(self.evaluation.cases)} validation scans' own grids (as medseg.infer + medseg.evaluate):"]
        lines += [f"  {name:<{width}}  {value:.4f}" for name, value in dice.items()]
        lines[-1] += "  (foreground classes)"
        return lines + [f"Validation label maps and per-case Dice and HD95: {self.folder} ({EVALUATION_FILE})"]


def validate_on_scan_grids(checkpoint: Path, cases: Sequence[Case], class_names: Sequence[str], run_folder: Path) -> FinalValidation:
    """Return the final validation of ``checkpoint`` on ``cases``: each case segmented onto its own grid by
    ``segment_scans`` (no postprocessing), scored against its label by ``score_case``, the label maps and
    evaluation.csv written to ``run_folder/validation/``. ``class_names`` include the background."""
    folder = run_folder / VALIDATION_FOLDER
    log.info(f"final validation: segmenting the {len(cases)} validation cases on their own grids with {checkpoint} into {folder}")
    summary = segment_scans(checkpoint, list(cases), folder, InferenceOptions(), overwrite=True, postprocessing=False)
    if summary.failed:
        name, reason = summary.failed[0]
        raise MedsegError(f"final validation of {checkpoint}: segmenting validation case {name} failed: {reason}; the checkpoints are kept")
    evaluation = Evaluation([score_case(folder / f"{case.name}.nii.gz", case.label) for case in cases], list(class_names[1:]))
    write_text_atomic(folder / EVALUATION_FILE, evaluation.csv_text())
    return FinalValidation(checkpoint, folder, evaluation)
