"""Voxels per second of medseg's sliding-window inference against a plain MONAI call on the same model and input.

Compares, on one random CT-sized volume and one MONAI UNet:
  * ``monai-default``: ``sliding_window_inference(x, patch, 1, net)`` (overlap 0.25, constant blending, float32);
  * ``medseg-same-overlap``: ours at overlap 0.25 with our other defaults (Gaussian, window batch, autocast on GPU);
  * ``medseg-defaults``: ours with every default (overlap 0.5).
Only the sliding-window stage is timed (the network's input is already preprocessed): best of ``--repeats``\nruns, interleaved, after one warm-up each.

    python benchmarks/inference_benchmark.py --size 512 512 256 --device cuda
    python benchmarks/inference_benchmark.py --size 192 192 128 --device cpu --output benchmarks/results/inference_cpu
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Callable

import monai
import torch
from monai.inferers import sliding_window_inference

from medseg.inference import InferenceOptions, Predictor, TrainedModel
from medseg.model.networks import network_for
from medseg.recipe import Recipe

NETWORK = {"channels": [16, 32, 64, 128, 256], "strides": [2, 2, 2, 2], "num_res_units": 2}


def seconds_once(run: Callable[[], torch.Tensor], device: torch.device) -> float:
    """Return the wall time of one run, waiting for the GPU to finish."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, nargs=3, default=[512, 512, 256], help="volume size in voxels")
    parser.add_argument("--patch", type=int, nargs=3, default=[96, 96, 96], help="window size")
    parser.add_argument("--classes", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sw-batch-size", type=int, default=4, help="ours (medseg's default window batch)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--output", default=None, help="write OUTPUT.json and OUTPUT.md")
    args = parser.parse_args()

    device = torch.device(args.device)
    torch.manual_seed(0)
    recipe = Recipe("UNet", NETWORK, ("CT",), tuple(f"class_{i}" for i in range(args.classes)), tuple(args.patch), precision="16-mixed")
    network = network_for(recipe).to(device).eval()
    model = TrainedModel(recipe, network, Path("benchmark"))
    image = torch.rand(1, 1, *args.size, device=device)
    voxels = image[0, 0].numel()
    patch = tuple(args.patch)

    def monai_default() -> torch.Tensor:
        with torch.inference_mode():
            return sliding_window_inference(image, patch, 1, network)

    def ours(overlap: float) -> Callable[[], torch.Tensor]:
        predictor = Predictor(model, InferenceOptions(overlap=overlap, sw_batch_size=args.sw_batch_size, device=str(device)))
        return lambda: predictor.probabilities(image)

    runs = {
        "monai-default": (monai_default, 0.25, 1, "constant", "float32"),
        "medseg-same-overlap": (ours(0.25), 0.25, args.sw_batch_size, "gaussian", "float16" if device.type == "cuda" else "float32"),
        "medseg-defaults": (ours(0.5), 0.5, args.sw_batch_size, "gaussian", "float16" if device.type == "cuda" else "float32"),
    }
    # One untimed warm-up each, then the runs interleaved so a busy machine slows all of them alike.
    for run, *_ in runs.values():
        run()
    timings: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, (run, *_) in runs.items():
            timings[name].append(seconds_once(run, device))
    results = []
    for name, (_, overlap, batch, mode, precision) in runs.items():
        seconds = min(timings[name])
        results.append({"name": name, "overlap": overlap, "sw_batch_size": batch, "blend": mode, "precision": precision,
                        "seconds": round(seconds, 3), "voxels_per_s": round(voxels / seconds)})
        print(f"{name}: {seconds:.2f} s, {voxels / seconds:,.0f} voxels/s", flush=True)
    base = results[0]["voxels_per_s"]
    report = {
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "volume": args.size,
        "patch": list(patch),
        "network": {"name": "UNet", "classes": args.classes, **NETWORK},
        "results": results,
        "speedup_vs_monai_default": {r["name"]: round(r["voxels_per_s"] / base, 2) for r in results[1:]},
    }
    print(json.dumps(report["speedup_vs_monai_default"]))
    if args.output:
        out = Path(args.output)
        out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
        rows = "\n".join(
            f"| {r['name']} | {r['overlap']} | {r['sw_batch_size']} | {r['blend']} | {r['precision']} | {r['seconds']} | {r['voxels_per_s']:,} |"
            for r in results
        )
        out.with_suffix(".md").write_text(
            f"# Sliding-window inference, {report['device']}\n\n"
            f"Command: `{report['command']}`  \nDate (UTC): {report['date_utc']}; torch {report['torch']}, MONAI {report['monai']}, "
            f"{report['cpu_threads']} CPU threads.  \nVolume {args.size} (random input), window {list(patch)}, "
            f"MONAI UNet channels {NETWORK['channels']}, {args.classes} classes. Best of {args.repeats} runs after a warm-up; "
            "sliding-window stage only.\n\n"
            "| run | overlap | window batch | blending | precision | seconds | voxels/s |\n|---|---|---|---|---|---|---|\n"
            f"{rows}\n\nSpeed-up against `monai-default`: "
            + ", ".join(f"{k} x{v}" for k, v in report["speedup_vs_monai_default"].items()) + "\n"
        )


if __name__ == "__main__":
    main()
