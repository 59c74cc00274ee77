"""Training throughput on one GPU per precision: AMP (fp16, bf16) against TF32 and against strict FP32, in one run.

The step is the batch planner's trial step (``medseg.memory.measure.run_training_step``: forward and DiceCE
under the precision's autocast, backward through a GradScaler for fp16, AdamW), on one fixed random batch, with
cuDNN autotuning on as training runs it. ``32-true`` runs twice: with TF32 matrix units (cuDNN's and PyTorch's
default for convolutions) and strict (``torch.backends.cudnn.allow_tf32 = False``). NVIDIA's nnU-Net reports AMP
at 2.43-2.55x TF32 on an A100. Samples/s come from the median of ``--steps`` steps after ``--warmup`` (each step
ends with a device synchronisation), the modes interleaved ``--repeats`` times.

    python benchmarks/gpu_precision_benchmark.py --out benchmarks/results/precision_cuda
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import monai
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.training_benchmark import SPLEEN_NETWORK  # noqa: E402
from medseg.memory.measure import run_training_step, synthetic_batch, training_setup  # noqa: E402
from medseg.recipe import Recipe  # noqa: E402
from medseg.tables import markdown_rows  # noqa: E402
from medseg.training.module import DEFAULT_NETWORK_KWARGS  # noqa: E402

SETTINGS = {"spleen": (SPLEEN_NETWORK, (96, 96, 96)), "demo": (DEFAULT_NETWORK_KWARGS, (64, 64, 32))}
# mode: (Lightning precision, TF32 allowed)
MODES = {"fp32-strict": ("32-true", False), "fp32-tf32": ("32-true", True), "16-mixed": ("16-mixed", True), "bf16-mixed": ("bf16-mixed", True)}


def step_times(setting: str, batch_size: int, mode: str, steps: int, warmup: int, device: torch.device) -> list[float]:
    """Return the wall time of each training step after the warm-up, synchronised with the device."""
    precision, tf32 = MODES[mode]
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.benchmark = True
    network_kwargs, patch = SETTINGS[setting]
    torch.manual_seed(0)
    setup = training_setup(Recipe("UNet", network_kwargs, ("CT",), ("background", "organ", "lesion"), patch))
    setup.net.to(device)
    batch = synthetic_batch(setup, batch_size, device)
    ends: list[float] = []

    def mark() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        ends.append(time.perf_counter())

    mark()
    run_training_step(setup, batch_size, precision, batch=batch, steps=warmup + steps, after_step=mark)
    return [b - a for a, b in zip(ends[warmup:], ends[warmup + 1:])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="output path without suffix (.json and .md are written)")
    parser.add_argument("--settings", nargs="+", choices=sorted(SETTINGS), default=["spleen", "demo"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[2, 16], help="patches per step")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # on a CPU: a check of this script only
    modes = [m for m in args.modes if MODES[m][0] != "bf16-mixed" or device.type != "cuda" or torch.cuda.is_bf16_supported()]
    rows = []
    for setting in args.settings:
        for batch_size in args.batch_sizes:
            times: dict[str, list[float]] = {mode: [] for mode in modes}
            for _ in range(args.repeats):
                for mode in modes:
                    times[mode] += step_times(setting, batch_size, mode, args.steps, args.warmup, device)
            per_s = {mode: batch_size / statistics.median(t) for mode, t in times.items()}
            for mode in modes:
                rows.append({
                    "setting": setting, "patch": list(SETTINGS[setting][1]), "batch_size": batch_size, "mode": mode,
                    "samples_per_s": round(per_s[mode], 2), "median_step_s": round(statistics.median(times[mode]), 5),
                    "x_tf32": round(per_s[mode] / per_s["fp32-tf32"], 3) if "fp32-tf32" in per_s else None,
                    "x_fp32_strict": round(per_s[mode] / per_s["fp32-strict"], 3) if "fp32-strict" in per_s else None,
                })
            print(json.dumps(rows[-len(modes):]), flush=True)
    result = {
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.machine()})",
        "versions": {"torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(), "monai": monai.__version__},
        "steps": args.steps, "warmup": args.warmup, "repeats": args.repeats,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    v = result["versions"]
    args.out.with_suffix(".md").write_text(
        f"# Training throughput per precision, {result['device']}\n\n"
        f"Command: `{result['command']}`  \nDate (UTC): {result['date_utc']}; torch {v['torch']}, CUDA {v['cuda']}, cuDNN {v['cudnn']}, "
        f"MONAI {v['monai']}.  \nBare training step (network + DiceCE + AdamW, one fixed random batch, cuDNN autotuning on); "
        f"samples/s from the median of {args.steps} steps after {args.warmup} warm-up steps, {args.repeats} interleaved runs per mode. "
        "Spleen: configs/spleen_ct.yaml's UNet at 96^3; demo: the default UNet at 64x64x32.\n\n"
        + markdown_rows([{"setting": r["setting"], "batch": r["batch_size"], "mode": r["mode"], "samples/s": f"{r['samples_per_s']:.1f}",
                          "x TF32": r["x_tf32"], "x strict FP32": r["x_fp32_strict"]} for r in rows]) + "\n"
    )
    print(args.out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
