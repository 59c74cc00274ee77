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

import logging
import sys

from medseg.cross_validation import asks_for_all_folds, run_cross_validation
from medseg.errors import MedsegError
from medseg.training.cli import TrainResult, run

__all__ = ["TrainResult", "main", "run"]


def main(argv: list[str] | None = None) -> None:
    """Entry point (``argv``: the options, default ``sys.argv[1:]``): user errors end as one line on stderr and exit
    code 1 (``--debug`` shows the traceback); a bad option exits with code 2."""
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    if debug:
        args.remove("--debug")
    try:
        if asks_for_all_folds(args):
            run_cross_validation(args)
        else:
            run(args)
    except MedsegError as err:
        if debug:
            raise
        print(f"medseg: error: {err}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
