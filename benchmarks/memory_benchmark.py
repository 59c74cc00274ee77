"""Memory benchmark of the batch planner for the default model and patch, per precision.

On a CUDA GPU it records: peak memory at each tried batch size, the planner's predicted vs measured peak at its
chosen size, the CPU-style byte estimate at that size, planner wall time, training throughput at the largest
and at a common batch size, and Lightning's ``Tuner.scale_batch_size`` (binsearch) found size and time.
Planning is uncapped (the comparison's 65536, not training's 1024), so on a large GPU the precisions are
compared at the sizes memory allows; a step that runs out of memory anywhere is recorded as None.
Without a GPU it records the CPU estimator's figures (fixed and per-sample bytes per precision, and the
batch sizes those imply for a simulated GPU of ``--capacity-gib``).

Writes ``<out>.json`` and ``<out>.md``:
    python benchmarks/memory_benchmark.py --out benchmarks/results/memory_cpu_estimator
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import lightning as L
from lightning.pytorch.tuner import Tuner
import monai
import torch
from torch.utils.data import DataLoader, Dataset

from medseg.memory.compare import COMPARISON_MAX_BATCH_SIZE
from medseg.memory.estimate import estimate_memory, estimate_step
from medseg.memory.measure import measure_cuda_step, training_setup
from medseg.memory.oom import is_out_of_memory, release_memory
from medseg.memory.plan import plan_batch_size, plan_on_device
from medseg.memory.simulate import SimulatedDevice
from medseg.precision import PRECISIONS
from medseg.tables import markdown_rows
from medseg.training.module import SegmentationModule

MiB = 2**20
T = TypeVar("T")


def unless_out_of_memory(run: Callable[[], T]) -> T | None:
    """Return ``run()``, or None when it ran out of memory: the benchmark records the gap and goes on."""
    try:
        return run()
    except RuntimeError as error:
        if not is_out_of_memory(error):
            raise
    release_memory()  # outside the except block, where the error no longer pins the failed step's tensors
    return None


def cpu_figures(module: SegmentationModule, precisions: list[str], capacity_gib: float) -> dict[str, Any]:
    """The estimator's bytes per precision and the batch they imply on a simulated GPU."""
    setup = training_setup(module.recipe, module.net)
    capacity = int(capacity_gib * 2**30)
    results: dict[str, Any] = {}
    for precision in precisions:
        start = time.perf_counter()
        fit, estimates = estimate_memory(setup, precision, sizes=(1, 2))
        seconds = time.perf_counter() - start
        device = SimulatedDevice(capacity, fit.peak_bytes)
        plan = plan_batch_size(device.probe(precision), precision, int(0.9 * capacity), max_batch_size=100_000)
        results[precision] = {
            "estimated_peak_mib": {m.batch_size: m.peak_bytes / MiB for m in estimates},
            "fixed_mib": fit.fixed_bytes / MiB,
            "per_sample_mib": fit.per_sample_bytes / MiB,
            "estimator_seconds": seconds,
            "simulated_batch_size": plan.batch_size,
        }
    return results


class RandomPatches(Dataset):
    """Endless random patches, so Lightning's tuner can try any batch size."""

    def __init__(self, in_channels: int, out_channels: int, patch_size: tuple[int, int, int]) -> None:
        self.shape, self.classes, self.channels = patch_size, out_channels, in_channels

    def __len__(self) -> int:
        return 1_000_000

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        # float32 labels, as the data module delivers them
        return {"image": torch.randn(self.channels, *self.shape), "label": torch.randint(0, self.classes, (1, *self.shape)).float()}


class RandomData(L.LightningDataModule):
    def __init__(self, dataset: RandomPatches, batch_size: int) -> None:
        super().__init__()
        self.dataset, self.batch_size = dataset, batch_size

    def train_dataloader(self) -> DataLoader:
        # batches are built in this process: worker prefetching would hold several of the tuner's largest in host memory
        return DataLoader(self.dataset, batch_size=self.batch_size, num_workers=0)


def lightning_tuner(precision: str, planned_batch_size: int) -> dict[str, Any]:
    """Lightning's binsearch batch-size finder on the same model and GPU, for comparison.

    Its doubling from 2 stops one doubling past the planner's size, so host memory stays bounded (a random
    batch of 8192 default patches is 8 GiB) while the tuner can still find more than the planner.
    """
    module = SegmentationModule()
    h = module.hparams
    data = RandomData(RandomPatches(h.in_channels, h.out_channels, tuple(h.patch_size)), batch_size=2)
    trainer = L.Trainer(accelerator="gpu", devices=1, precision=precision, max_epochs=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, limit_val_batches=0)
    trials = max(1, math.ceil(math.log2(max(planned_batch_size, 2) / 2)) + 1)
    start = time.perf_counter()
    found = unless_out_of_memory(lambda: Tuner(trainer).scale_batch_size(module, datamodule=data, mode="binsearch", max_trials=trials))
    return {"batch_size": found, "seconds": time.perf_counter() - start, "max_trials": trials}


def cuda_figures(module: SegmentationModule, precisions: list[str]) -> dict[str, Any]:
    """Measured planning, estimate accuracy and throughput per precision on the current GPU."""
    module.cuda()
    setup = training_setup(module.recipe, module.net)
    results: dict[str, Any] = {}
    for precision in precisions:
        plan = plan_on_device(setup, precision, max_batch_size=COMPARISON_MAX_BATCH_SIZE)
        # the estimator runs a real step at the planned size, beside what planning left cached
        estimate = unless_out_of_memory(lambda: estimate_step(setup, plan.batch_size, precision))
        results[precision] = {
            "trials": [{"batch_size": t.batch_size, "peak_mib": None if t.peak_bytes is None else t.peak_bytes / MiB} for t in plan.trials],
            "batch_size": plan.batch_size,
            "budget_mib": plan.budget_bytes / MiB,
            "predicted_peak_mib": plan.predicted_peak_bytes / MiB,
            "measured_peak_mib": plan.measured_peak_bytes / MiB,
            "budget_used": plan.measured_peak_bytes / plan.budget_bytes,
            "estimator_peak_mib": None if estimate is None else estimate.peak_bytes / MiB,
            "estimator_error": None if estimate is None else estimate.peak_bytes / plan.measured_peak_bytes - 1,
            "fixed_mib": plan.fixed_bytes / MiB,
            "per_sample_mib": plan.per_sample_bytes / MiB,
            "plan_seconds": plan.plan_seconds,
        }
    common = min(r["batch_size"] for r in results.values())
    for precision, row in results.items():
        for key, size in (("largest", row["batch_size"]), ("common", common)):
            timed = measure_cuda_step(setup, size, precision, steps=5)  # out of memory: a failed measurement
            row[f"samples_per_second_{key}"] = size / timed.seconds if timed.fits else None
        row["common_batch_size"] = common
        row["lightning_tuner"] = lightning_tuner(precision, row["batch_size"])
    return results


CPU_COLUMNS = ["precision", "peak b=1 (MiB)", "peak b=2 (MiB)", "fixed (MiB)", "per sample (MiB)", "per sample / FP32", "simulated batch", "estimator s"]
CUDA_COLUMNS = [
    "precision", "batch", "predicted peak MiB", "measured peak MiB", "budget used", "estimator error", "per sample / FP32",
    "plan s", "samples/s (largest)", "samples/s (common)", "Lightning tuner batch (s)",
]


def cpu_cells(row: dict[str, Any], fp32_per_sample: float) -> list[str]:
    peaks = row["estimated_peak_mib"]
    return [
        f"{peaks[1]:.1f}", f"{peaks[2]:.1f}", f"{row['fixed_mib']:.1f}", f"{row['per_sample_mib']:.2f}",
        f"{row['per_sample_mib'] / fp32_per_sample:.3f}", str(row["simulated_batch_size"]), f"{row['estimator_seconds']:.1f}",
    ]


def cell(value: float | None, spec: str) -> str:
    """Format ``value``, or "OOM" where its step ran out of memory."""
    return "OOM" if value is None else format(value, spec)


def cuda_cells(row: dict[str, Any], fp32_per_sample: float) -> list[str]:
    tuner = row["lightning_tuner"]
    return [
        str(row["batch_size"]), f"{row['predicted_peak_mib']:.0f}", f"{row['measured_peak_mib']:.0f}", f"{row['budget_used']:.1%}",
        cell(row["estimator_error"], "+.1%"), f"{row['per_sample_mib'] / fp32_per_sample:.3f}", f"{row['plan_seconds']:.1f}",
        cell(row["samples_per_second_largest"], ".1f"), f"{cell(row['samples_per_second_common'], '.1f')} (b={row['common_batch_size']})",
        f"{cell(tuner['batch_size'], 'd')} ({tuner['seconds']:.1f}, {tuner['max_trials']} trials)",
    ]


def markdown(result: dict[str, Any], command: str) -> str:
    env = result["environment"]
    lines = [
        "# Batch planner memory benchmark",
        "",
        f"- command: `{command}`",
        f"- date: {env['date']}",
        f"- device: {env['device']}",
        f"- torch {env['torch']}, CUDA {env['cuda']}, MONAI {env['monai']}, Lightning {env['lightning']}, Python {env['python']}",
        f"- model: {result['model']}, patch {result['patch_size']}",
        "",
    ]
    if result["backend"] == "cpu-estimator":
        lines += [
            f"CPU estimator, no GPU: bytes counted by `medseg.memory.estimate` (weights, gradients, AdamW state, batch, tensors saved"
            f" for backward under each precision's CPU autocast) at batch sizes 1 and 2; batch sizes are for a simulated"
            f" {result['capacity_gib']:g} GiB GPU with a 0.9 budget. No GPU figures: the 15 % estimator-accuracy,"
            " 85 % budget-use, planning-time and throughput targets need a CUDA run of this script.",
            "",
        ]
    header, cells = (CPU_COLUMNS, cpu_cells) if result["backend"] == "cpu-estimator" else (CUDA_COLUMNS, cuda_cells)
    fp32 = result["precisions"].get("32-true", {}).get("per_sample_mib", float("nan"))
    lines.append(markdown_rows([dict(zip(header, [precision, *cells(row, fp32)])) for precision, row in result["precisions"].items()]))
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="output path without suffix (.json and .md are written)")
    parser.add_argument("--capacity-gib", type=float, default=80.0, help="simulated GPU memory for the CPU estimator")
    parser.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=list(PRECISIONS))
    options = parser.parse_args()
    torch.manual_seed(0)
    module = SegmentationModule()
    on_gpu = torch.cuda.is_available()
    result: dict[str, Any] = {
        "backend": "cuda" if on_gpu else "cpu-estimator",
        "model": {"network": module.hparams.network, **module.hparams.network_kwargs},
        "patch_size": list(module.hparams.patch_size),
        "environment": {
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "device": torch.cuda.get_device_name() if on_gpu else f"CPU ({platform.machine()}, {os.cpu_count()} cores), no GPU",
            "torch": torch.__version__, "cuda": torch.version.cuda, "monai": monai.__version__,
            "lightning": L.__version__, "python": platform.python_version(),
        },
    }
    if on_gpu:
        precisions = [p for p in options.precisions if p != "bf16-mixed" or torch.cuda.is_bf16_supported()]
        result["precisions"] = cuda_figures(module, precisions)
    else:
        result["capacity_gib"] = options.capacity_gib
        result["precisions"] = cpu_figures(module, options.precisions, options.capacity_gib)
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    options.out.with_suffix(".md").write_text(markdown(result, "python " + " ".join(sys.argv)))
    print(options.out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
