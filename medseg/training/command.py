"""`python -m medseg.train`: train a segmentation model from a YAML config (LightningCLI), demo data by default.

Examples:
    python -m medseg.train                                    # built-in demo phantoms
    python -m medseg.train --config configs/spleen_ct.yaml     # your data
    python -m medseg.train --config configs/demo.yaml --trainer.max_epochs 5 --data.batch_size 4
    python -m medseg.train --config configs/demo.yaml --print_config   # resolved config, no training
    python -m medseg.train --config configs/demo.yaml --data.fold all  # every fold, then the cross-validation summary
    python -m medseg.train --config configs/demo.yaml --data.fold all --retrain   # train again folds trained with other options
"""

from __future__ import annotations

from medseg.errors import run_command
from medseg.training.cli import TrainResult, current_training_spellings, output_as_training_options, run
from medseg.training.cross_validation import asks_for_all_folds, run_cross_validation

__all__ = ["TrainResult", "main", "run"]


def train(args: list[str]) -> None:
    """Train as ``args`` say: one fold, or every fold and the cross-validation summary (``--data.fold all``)."""
    args = current_training_spellings(output_as_training_options(args))  # folds read the current spellings: no notice each
    if asks_for_all_folds(args):
        run_cross_validation(args)
    else:
        run(args)


def main(argv: list[str] | None = None) -> int:
    """Entry point (``argv``: the options, default ``sys.argv[1:]``): return the exit code (``run_command``); a bad
    option exits with code 2."""
    return run_command(train, argv)

