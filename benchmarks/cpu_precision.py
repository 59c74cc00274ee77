"""Training-step time on this CPU at 32-true and bf16-mixed, side by side: why medseg runs 32-true on CPUs
without native bf16 when 16-mixed is asked for (see medseg.precision.resolve_precision).

Default model and patch of the demo config (UNet 16-32-64-128, 64x64x32, batch 2); median of --steps
steps after one warm-up step, both precisions interleaved in one run. Writes ``OUTPUT.json`` and ``OUTPUT.md``:
    python -m benchmarks.cpu_precision --output benchmarks/results/cpu_precision/cpu_precision
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from benchmarks.common import RESULTS, add_output_option, write_results
from medseg.planning.step import run_training_step, training_setup
from medseg.training.module import SegmentationModule
from medseg.precision import cpu_has_native_bf16


def step_seconds(precision: str, steps: int, batch_size: int) -> float:
    """Return the median wall time of a full training step (forward, loss, backward, AdamW) at `precision`."""
    torch.manual_seed(0)
    module = SegmentationModule(patch_size=(64, 64, 32))
    setup = training_setup(module.recipe, module.net)
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        run_training_step(setup, batch_size, precision)
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_output_option(parser, default=RESULTS / "cpu_precision" / "cpu_precision")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=2)
    args = parser.parse_args()
    seconds = {p: step_seconds(p, args.steps, args.batch_size) for p in ("32-true", "bf16-mixed")}
    results = {
        "threads": torch.get_num_threads(),
        "native_bf16": cpu_has_native_bf16(),
        "step_seconds": seconds,
        "bf16_over_fp32": seconds["bf16-mixed"] / seconds["32-true"],
    }
    table = "\n".join(f"| {p} | {s:.3f} |" for p, s in seconds.items())
    record = write_results(
        args.output, "Training step time on CPU: fp32 vs bf16 autocast", results,
        f"{results['threads']} threads; native bf16: {results['native_bf16']}.  \n"
        f"Default UNet, 64x64x32 patches, batch {args.batch_size}; median of {args.steps} steps after a warm-up.\n\n"
        f"| precision | seconds per step |\n|---|---|\n{table}\n\nbf16-mixed / 32-true: x{results['bf16_over_fp32']:.1f}\n",
    )
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
