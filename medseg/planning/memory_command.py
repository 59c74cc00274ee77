"""`python -m medseg.memory`: compare FP32 and mixed-precision memory and batch size for a training config, without training.

A view of the batch planner (``medseg.planning``). Takes the training options (``--config``, ``--data.root``,
``--model.*``), so the network, patch and the dataset's channels and classes are what ``python -m medseg.train``
would use. On a CUDA GPU every precision is planned with real trials (steady-state peaks after a warm-up step,
the first step's autotuning peak beside them, verified batch size, throughput). With ``--capacity_gib``, or
without a GPU, fake-tensor steps plan each precision for a GPU of that size (default 8 GiB). Prints the table
and writes memory_report.json and memory_report.png to ``--output``.

Examples:
    python -m medseg.memory --config configs/demo.yaml
    python -m medseg.memory --config configs/spleen_ct.yaml --data.root data/Task09_Spleen --capacity_gib 24
"""

from __future__ import annotations

import argparse
import logging
from typing import TYPE_CHECKING

from medseg.errors import run_command
from medseg.option_values import BATCH_PLAN_CACHE, SIMULATED_CAPACITY_GIB
from medseg.planning.command import planning_parser

if TYPE_CHECKING:
    from medseg.planning.batch_search import BatchSearchResult

log = logging.getLogger("medseg.memory")


def parse_args(args: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    """Return this command's own options, and the rest: training options (checked by ``parse_training_options``)."""
    parser = planning_parser("python -m medseg.memory", __doc__, "runs/memory", "folder for memory_report.json and .png")
    parser.add_argument("--cache_path", default=f"runs/{BATCH_PLAN_CACHE}", old=["--cache"], help="planning cache shared with training (GPU only)")
    return parser.parse_known_args(args)


def run(args: list[str] | None = None) -> list[BatchSearchResult]:
    """Compare the precisions as the command line says, print the table and save the report files."""
    options, training_args = parse_args(args)
    # torch, MONAI and Lightning load here, not at the top, so that --help answers without them
    import torch

    from medseg.planning.budget import check_budget_fraction
    from medseg.planning.cache import PlanningCache
    from medseg.planning.precision_comparison import estimated_batch_searches, measured_batch_searches
    from medseg.planning.report import format_table, save_report
    from medseg.training.cli import parse_training_options
    from medseg.training.options import recipe_from_options

    check_budget_fraction(options.budget_fraction)
    recipe = recipe_from_options(parse_training_options(training_args))
    if options.capacity_gib is None and torch.cuda.is_available():
        results = measured_batch_searches(recipe, options.precisions, options.budget_fraction, PlanningCache(options.cache_path))
    else:
        capacity_gib = SIMULATED_CAPACITY_GIB if options.capacity_gib is None else options.capacity_gib
        log.info("fake-tensor steps for a %g GiB GPU (no throughput)", capacity_gib)
        results = estimated_batch_searches(recipe, options.precisions, int(capacity_gib * 2**30), options.budget_fraction)
    print(format_table(results))
    json_path, png_path = save_report(results, options.output)
    print(f"saved {json_path} and {png_path}")
    return results


def main(argv: list[str] | None = None) -> int:
    """Entry point: return the exit code (``run_command``: a user error is one line and exit code 1)."""
    return run_command(run, argv)

