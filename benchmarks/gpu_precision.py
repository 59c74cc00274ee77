"""Training throughput on one GPU per precision: AMP (fp16, bf16) against TF32 and against strict FP32, in one run.
On a CPU the same for fp32 against bf16 (``--modes fp32-strict bf16-mixed``: TF32 is a GPU's).

The step is the batch planner's trial step (``medseg.planning.step.run_training_step``: forward and DiceCE
under the precision's autocast, backward through a GradScaler for fp16, AdamW), on one fixed random batch, with
cuDNN autotuning on as training runs it. ``32-true`` runs twice: with TF32 matrix units (cuDNN's and PyTorch's
default for convolutions) and strict (``torch.backends.cudnn.allow_tf32 = False``). NVIDIA's nnU-Net reports AMP
at 2.43-2.55x TF32 on an A100. ``--variants`` adds training's speed options (``speed.channels_last``,
``speed.compile``, applied by the same function) beside the eager network. Samples/s come from the median of
``--steps`` steps after ``--warmup`` (each step ends with a device synchronisation; a compiled network compiles in
the warm-up), the modes interleaved ``--repeats`` times. The warm-up's seconds are reported too: what compiling costs.

    python -m benchmarks.gpu_precision --output benchmarks/results/gpu_precision/precision_cuda
    python -m benchmarks.gpu_precision --settings spleen --batch-sizes 8 --modes fp32-strict bf16-mixed \
        --variants eager channels_last compile channels_last+compile --steps 4 --warmup 2 --repeats 1 --output benchmarks/results/gpu_precision/precision_cpu_spleen
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from benchmarks.common import add_output_option, cpu_name, markdown_rows, write_results
from benchmarks.training import SPLEEN_NETWORK
from medseg.planning.step import run_training_step, synthetic_batch, training_setup
from medseg.precision import cpu_has_native_bf16
from medseg.recipe import Recipe
from medseg.training.module import DEFAULT_NETWORK_KWARGS
from medseg.training.speed import apply_speed_settings

SETTINGS = {"spleen": (SPLEEN_NETWORK, (96, 96, 96)), "demo": (DEFAULT_NETWORK_KWARGS, (64, 64, 32))}
# mode: (Lightning precision, TF32 allowed)
MODES = {"fp32-strict": ("32-true", False), "fp32-tf32": ("32-true", True), "16-mixed": ("16-mixed", True), "bf16-mixed": ("bf16-mixed", True)}
# variant: (speed.channels_last, speed.compile)
VARIANTS = {"eager": (False, False), "channels_last": (True, False), "compile": (False, True), "channels_last+compile": (True, True)}


def step_times(setting: str, batch_size: int, mode: str, variant: str, steps: int, warmup: int, device: torch.device) -> tuple[float, list[float]]:
    """Return the warm-up's wall time (compiling included) and that of each training step after it, synchronised with the device."""
    precision, tf32 = MODES[mode]
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.benchmark = True
    network_kwargs, patch = SETTINGS[setting]
    torch.manual_seed(0)
    torch.compiler.reset()  # each compiled run pays its own compilation, in its warm-up
    setup = training_setup(Recipe("UNet", network_kwargs, ("CT",), ("background", "organ", "lesion"), patch))
    setup.net.to(device)
    apply_speed_settings(setup.net, *VARIANTS[variant])
    batch = synthetic_batch(setup, batch_size, device)
    ends: list[float] = []

    def mark() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        ends.append(time.perf_counter())

    mark()
    run_training_step(setup, batch_size, precision, batch=batch, steps=warmup + steps, after_step=mark)
    return ends[warmup] - ends[0], [b - a for a, b in zip(ends[warmup:], ends[warmup + 1:])]


def write(args: argparse.Namespace, device: torch.device, rows: list[dict]) -> dict:
    """Return the record of the rows measured so far, written to ``args.output`` .json and .md."""
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"{cpu_name()}, {torch.get_num_threads()} threads, native bf16: {cpu_has_native_bf16()}",
        "steps": args.steps, "warmup": args.warmup, "repeats": args.repeats, "variants": args.variants,
        "rows": rows,
    }
    return write_results(args.output, f"Training throughput per precision, {result['device']}", result, markdown(args, rows))


def markdown(args: argparse.Namespace, rows: list[dict]) -> str:
    """Return what was measured, then the rows as a Markdown table."""
    return (
        "Bare training step (network + DiceCE + AdamW, one fixed random batch, cuDNN autotuning on); "
        f"samples/s from the median of {args.steps} steps after {args.warmup} warm-up steps, {args.repeats} interleaved runs per mode. "
        "Spleen: configs/spleen_ct.yaml's UNet at 96^3; demo: the default UNet at 64x64x32. Variants: training's speed "
        "options (eager: neither). Warm-up s: the warm-up steps' wall time, compiling included. x TF32: against TF32 in the same "
        "variant; x eager TF32: against the eager network at TF32 (on a CPU TF32 is not run: see x strict FP32 and x eager, same mode).\n\n"
        + markdown_rows([{"setting": r["setting"], "batch": r["batch_size"], "variant": r["variant"], "mode": r["mode"],
                          "samples/s": f"{r['samples_per_s']:.2f}" if "error" not in r else r["error"], "warm-up s": r.get("warmup_s"), "x TF32": r.get("x_tf32"),
                          "x strict FP32": r.get("x_fp32_strict"), "x eager TF32": r.get("x_eager_tf32"),
                          "x eager, same mode": r.get("x_eager_same_mode")} for r in rows])
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_output_option(parser, required=True)
    parser.add_argument("--settings", nargs="+", choices=sorted(SETTINGS), default=["spleen", "demo"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[2, 16], help="patches per step")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=["eager"], help="training's speed options")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # on a CPU: a check of this script only
    modes = [m for m in args.modes if MODES[m][0] != "bf16-mixed" or device.type != "cuda" or torch.cuda.is_bf16_supported()]
    rows = []
    runs = [(variant, mode) for variant in args.variants for mode in modes]
    for setting in args.settings:
        for batch_size in args.batch_sizes:
            times: dict[tuple[str, str], list[float]] = {run: [] for run in runs}
            warmups: dict[tuple[str, str], list[float]] = {run: [] for run in runs}
            failed: dict[tuple[str, str], str] = {}
            for _ in range(args.repeats):
                for run in runs:
                    if run in failed:
                        continue
                    try:
                        warmup, seconds = step_times(setting, batch_size, run[1], run[0], args.steps, args.warmup, device)
                        warmups[run].append(warmup)
                        times[run] += seconds
                    except Exception as error:  # a variant that cannot run here (no compiler for torch.compile, say) is reported
                        failed[run] = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
                        print(f"{setting} batch {batch_size} {run}: {failed[run]}", flush=True)
            per_s = {run: batch_size / statistics.median(t) for run, t in times.items() if run not in failed}

            def ratio(run: tuple[str, str], to: tuple[str, str]) -> float | None:
                return round(per_s[run] / per_s[to], 3) if to in per_s else None

            for variant, mode in runs:
                if (variant, mode) in failed:
                    rows.append({"setting": setting, "patch": list(SETTINGS[setting][1]), "batch_size": batch_size, "variant": variant,
                                 "mode": mode, "error": failed[variant, mode]})
                    continue
                rows.append({
                    "setting": setting, "patch": list(SETTINGS[setting][1]), "batch_size": batch_size, "variant": variant, "mode": mode,
                    "samples_per_s": round(per_s[variant, mode], 2), "median_step_s": round(statistics.median(times[variant, mode]), 5),
                    "warmup_s": round(statistics.mean(warmups[variant, mode]), 1),
                    "x_tf32": ratio((variant, mode), (variant, "fp32-tf32")),
                    "x_fp32_strict": ratio((variant, mode), (variant, "fp32-strict")),
                    "x_eager_tf32": ratio((variant, mode), ("eager", "fp32-tf32")),
                    "x_eager_same_mode": ratio((variant, mode), ("eager", mode)),
                })
            print(json.dumps(rows[-len(runs):]), flush=True)
            write(args, device, rows)  # after each group: a run stopped at its time limit keeps what it measured
    print(Path(f"{args.output}.md").read_text())


if __name__ == "__main__":
    main()
