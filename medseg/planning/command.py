"""`python -m medseg.plan`: plan spacing, normalisation, patch, network and batch for a dataset and a GPU.

Takes the training options (``--data.root``, ``--data.cache_dir``, ...) so the dataset is read as training
reads it. On a CUDA GPU every candidate is checked with real steps; with ``--capacity_gib``, or without a GPU,
with fake-tensor steps against a simulated GPU of that size (default 8 GiB). Prints FP32 and mixed precision side
by side and writes plan.json, plan.png and plan.yaml (a config for ``python -m medseg.train --config``) to ``--output``.

The network is nnU-Net's class (a MONAI DynUNet with a full-resolution first stage and deep supervision) unless
--network says otherwise; --preset M|L|XL plans nnU-Net's residual-encoder presets for their GPU sizes.

Examples:
    python -m medseg.plan --data.root data/Task09_Spleen --capacity_gib 24
    python -m medseg.plan --data.root data/Task09_Spleen --preset L
    python -m medseg.train --config runs/plan/plan.yaml
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from medseg.atomic import atomic_target, write_text_atomic
from medseg.command_line import CommandParser
from medseg.errors import run_command
from medseg.option_values import (
    COMPARED_PRECISIONS, DEFAULT_BUDGET_FRACTION, DEFAULT_PLANNED_NETWORK, PLANNED_NETWORKS, PRECISIONS, RESENC_PRESETS, SIMULATED_CAPACITY_GIB,
)

if TYPE_CHECKING:
    from medseg.planning.store import StoredPlan

log = logging.getLogger("medseg.plan")


def planning_parser(prog: str, description: str, output: str, output_help: str) -> CommandParser:
    """Return the parser plan and memory share: the precisions, the memory budget, the GPU's size and the output
    folder; any other option is a training option, for ``parse_training_options`` to check."""
    parser = CommandParser(prog, description, "Any other option is a training option (python -m medseg.train --help_all lists them).",
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=list(COMPARED_PRECISIONS),
                        help="precisions to put side by side")
    parser.add_argument("--budget_fraction", type=float, default=DEFAULT_BUDGET_FRACTION, old=["--budget-fraction"],
                        help="share of the GPU memory this process may use that a step's steady state may use")
    parser.add_argument("--capacity_gib", type=float, default=None, old=["--capacity-gib"],
                        help="plan for a GPU of this much memory with fake-tensor steps, on a GPU machine too "
                             f"(default: measure this machine's GPU; without one, {SIMULATED_CAPACITY_GIB:g})")
    parser.add_argument("-o", "--output", default=output, old=["--out"], help=output_help)
    return parser


def add_network_options(parser: argparse.ArgumentParser) -> None:
    """Add --network and --preset, which choose the network a plan is made for: in plan, and in train for a dataset
    given without a config."""
    parser.add_argument("--network", choices=PLANNED_NETWORKS, default=None,
                        help=f"network to plan: plain (nnU-Net's PlainConvUNet class), resenc (its residual-encoder class), "
                             f"tutorial (MONAI's spleen-tutorial UNet) (default: {DEFAULT_PLANNED_NETWORK}; resenc with --preset)")
    parser.add_argument("--preset", choices=list(RESENC_PRESETS), default=None,
                        help="nnU-Net's residual-encoder preset: plan for its GPU size ("
                             + ", ".join(f"{name} {target} GiB" for name, (target, _) in RESENC_PRESETS.items())
                             + ") with fake-tensor steps")


def parse_args(args: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    """Return this command's own options, and the rest: training options (checked by ``parse_training_options``)."""
    parser = planning_parser("python -m medseg.plan", __doc__, "runs/plan", "folder for plan.json, plan.png and plan.yaml")
    add_network_options(parser)
    return parser.parse_known_args(args)


def run(args: list[str] | None = None) -> StoredPlan:
    """Plan as the command line says, print the table and write plan.json, plan.png and plan.yaml."""
    options, training_args = parse_args(args)
    # torch, MONAI and Lightning load here, not at the top, so that --help answers without them
    from medseg.planning.budget import check_budget_fraction
    from medseg.planning.report import format_plan, plot_plan
    from medseg.planning.store import plan_for_training
    from medseg.training.cli import parse_training_options
    from medseg.training.options import dataset_and_cache

    check_budget_fraction(options.budget_fraction)
    spec, cache_dir = dataset_and_cache(parse_training_options(training_args))
    stored = plan_for_training(
        spec, cache_dir, options.capacity_gib, options.precisions, options.budget_fraction, network=options.network, preset=options.preset,
    )
    plan = stored.plan
    print(format_plan(plan))
    out = Path(options.output)
    write_text_atomic(out / "plan.json", json.dumps(plan.to_dict(), indent=2))
    write_text_atomic(out / "plan.yaml", stored.config_path.read_text())
    with atomic_target(out / "plan.png") as temp:
        plot_plan(plan).savefig(temp, dpi=110, format="png")
    made = "cached plan" if stored.cached else f"planned in {plan.plan_seconds:.1f} s"
    print(f"{made}; saved {out}/plan.json, plan.png and plan.yaml")
    return stored


def main(argv: list[str] | None = None) -> int:
    """Entry point: return the exit code (``run_command``: a user error is one line and exit code 1)."""
    return run_command(run, argv)

