"""`python -m medseg.memory --config CONFIG`: compare FP32 and mixed-precision memory and batch size, without training.

On a CUDA GPU every precision is planned with real trial steps (measured peaks, verified batch size, throughput).
Without one, the CPU estimator counts each precision's bytes and the batch size is planned against a simulated
GPU of ``--capacity-gib``. Prints the table and writes memory_report.json and memory_report.png to ``--out``.

Examples:
    python -m medseg.memory --config configs/demo.yaml
    python -m medseg.memory --config configs/demo.yaml --capacity-gib 24 --out runs/memory
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import torch
import yaml

from medseg.errors import MedsegError
from medseg.memory.compare import estimated_plans, measured_plans
from medseg.memory.measure import PRECISIONS, check_budget_fraction
from medseg.memory.plan import BatchPlan, PlanCache
from medseg.memory.report import format_table, save_report
from medseg.model.module import SegmentationModule

log = logging.getLogger("medseg.memory")


def read_module(config_path: Path | None, in_channels: int, out_channels: int) -> SegmentationModule:
    """Return the Lightning module a training config describes (its ``model`` section and ``data.patch_size``).

    The channel counts come from the dataset in training; here they are the config's or the flags'.
    """
    config: dict[str, Any] = {}
    if config_path is not None:
        if not config_path.exists():
            raise MedsegError(f"config file {config_path} does not exist")
        config = yaml.safe_load(config_path.read_text()) or {}
    model = dict(config.get("model") or {})
    patch_size = (config.get("data") or {}).get("patch_size") or model.get("patch_size")
    model.update(in_channels=model.get("in_channels", in_channels), out_channels=model.get("out_channels", out_channels))
    if patch_size is not None:
        model["patch_size"] = tuple(patch_size)
    try:
        return SegmentationModule(**model)
    except TypeError as err:
        raise MedsegError(f"model section of {config_path}: {err}") from None


def run(args: list[str] | None = None) -> list[BatchPlan]:
    """Compare the precisions as the command line says, print the table and save the report files."""
    parser = argparse.ArgumentParser(prog="python -m medseg.memory", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, help="training config (YAML): its model section and data.patch_size")
    parser.add_argument("--precisions", nargs="+", choices=PRECISIONS, help="default: all the device supports")
    parser.add_argument("--budget-fraction", type=float, default=0.9, help="share of free GPU memory a step may use")
    parser.add_argument("--capacity-gib", type=float, default=80.0, help="simulated GPU memory when there is no CUDA GPU")
    parser.add_argument("--in-channels", type=int, default=1, help="image channels, if the config does not say")
    parser.add_argument("--out-channels", type=int, default=3, help="classes incl. background, if the config does not say")
    parser.add_argument("--out", type=Path, default=Path("runs/memory"), help="folder for memory_report.json and .png")
    parser.add_argument("--cache", type=Path, default=Path("runs/batch_plans.json"), help="plan cache shared with training (GPU only)")
    options = parser.parse_args(args)
    check_budget_fraction(options.budget_fraction)
    module = read_module(options.config, options.in_channels, options.out_channels)
    precisions = options.precisions or [
        p for p in PRECISIONS if p != "bf16-mixed" or not torch.cuda.is_available() or torch.cuda.is_bf16_supported()
    ]
    if torch.cuda.is_available():
        plans = measured_plans(module, precisions, options.budget_fraction, PlanCache(options.cache))
    else:
        log.info("no CUDA GPU: CPU estimator against a simulated %g GiB GPU (no throughput)", options.capacity_gib)
        plans = estimated_plans(module, precisions, int(options.capacity_gib * 2**30), options.budget_fraction)
    print(format_table(plans))
    json_path, png_path = save_report(plans, options.out)
    print(f"saved {json_path} and {png_path}")
    return plans


def main() -> None:
    """Entry point: user errors end as one line on stderr and exit code 1."""
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    try:
        run()
    except MedsegError as err:
        print(f"medseg: error: {err}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
