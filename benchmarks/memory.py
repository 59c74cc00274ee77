"""Memory benchmark of the batch planner for the default model and patch, per precision.

On a CUDA GPU it records, per precision: each trial's steady-state peak (the steps after a warm-up step) and
first-step peak (cuDNN autotuning), the planner's predicted vs measured steady peak at its chosen size, the
fake-tensor estimate at that size, planner wall time, training throughput at the largest and at a common batch
size, and (``--tuner``) Lightning's ``Tuner.scale_batch_size`` (binsearch) found size and time. Planning goes up to
the comparison's 65536 (not training's 1024), so on a large GPU the precisions are compared at the sizes memory
allows; a step that runs out of memory anywhere is recorded as None. Then it trains ``--endurance-steps`` steps
(at most ``--endurance-seconds``) at the planned size and at the tuner's, counting out-of-memory errors, with the
first step's peak and the steady peak after it. ``--gpu-memory-gib`` caps this process's share of a large GPU
(``torch.cuda.set_per_process_memory_fraction``, whose excess raises out-of-memory as a smaller GPU would; the
planner's budget honours it), so that a benchmark of a small GPU's batch sizes fits in minutes.
Without a GPU it records the fake-tensor estimate's figures (fixed and per-sample bytes per precision, and the
batch sizes those imply for a GPU of ``--capacity-gib``).

Writes ``OUTPUT.json`` and ``OUTPUT.md``:
    python -m benchmarks.memory --output benchmarks/results/memory/memory_cpu_estimator
    python -m benchmarks.memory --config configs/spleen_ct.yaml --gpu-memory-gib 8 --output benchmarks/results/memory/memory_cuda_spleen
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import lightning as L
import torch
import yaml
from lightning.pytorch.tuner import Tuner
from torch.utils.data import DataLoader, Dataset

from benchmarks.common import add_output_option, markdown_rows, write_results
from medseg.option_values import SIMULATED_CAPACITY_GIB
from medseg.planning.batch_search import fit_memory, search_batch_size
from medseg.planning.budget import budget_bytes
from medseg.planning.cuda_steps import measure_cuda_step
from medseg.planning.fake_tensor import fake_step, fake_tensor_step_cost
from medseg.planning.oom import is_out_of_memory, release_memory
from medseg.planning.on_device import search_on_device
from medseg.planning.precision_comparison import COMPARISON_MAX_BATCH_SIZE
from medseg.planning.step import TrainingSetup, run_training_step, training_setup
from medseg.precision import PRECISIONS
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
    """The fake-tensor estimate's bytes per precision and the batch they imply for a GPU of ``capacity_gib``."""
    capacity = int(capacity_gib * 2**30)
    results: dict[str, Any] = {}
    for precision in precisions:
        cost = fake_tensor_step_cost(module.recipe, precision)
        start = time.perf_counter()
        estimates = [cost(b) for b in (1, 2)]
        fit = fit_memory(estimates)
        plan = search_batch_size(cost, precision, budget_bytes(capacity, 0.9), max_batch_size=COMPARISON_MAX_BATCH_SIZE)
        results[precision] = {
            "estimated_peak_mib": {m.batch_size: m.peak_bytes / MiB for m in estimates},
            "fixed_mib": fit.fixed_bytes / MiB,
            "per_sample_mib": fit.per_sample_bytes / MiB,
            "estimator_seconds": time.perf_counter() - start,  # the plan's steps included
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

    def val_dataloader(self) -> list:
        return []  # the module validates; the tuner trains only (limit_val_batches=0)


def lightning_tuner(settings: dict[str, Any], precision: str, planned_batch_size: int) -> dict[str, Any]:
    """Lightning's binsearch batch-size finder on the same model and GPU, for comparison.

    Its doubling from 2 stops one doubling past the planner's size, so host memory stays bounded (a random
    batch of 8192 default patches is 8 GiB) while the tuner can still find more than the planner.
    """
    module = SegmentationModule(**settings)
    h = module.hparams
    data = RandomData(RandomPatches(h.in_channels, h.out_channels, tuple(h.patch_size)), batch_size=2)
    trainer = L.Trainer(accelerator="gpu", devices=1, precision=precision, max_epochs=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, limit_val_batches=0)
    trials = max(1, math.ceil(math.log2(max(planned_batch_size, 2) / 2)) + 1)
    start = time.perf_counter()
    found = unless_out_of_memory(lambda: Tuner(trainer).scale_batch_size(module, datamodule=data, mode="binsearch", max_trials=trials))
    return {"batch_size": found, "seconds": time.perf_counter() - start, "max_trials": trials}


def endurance(setup: TrainingSetup, batch_size: int, precision: str, steps: int, seconds: float) -> dict[str, Any]:
    """Train up to ``steps`` steps (fresh random batches every 10) within about ``seconds``; count out-of-memory errors.

    The first step's peak (cuDNN autotuning, where the shape is new to this process) is kept apart from the steady
    peak of the steps after it."""
    def train(chunk: int) -> bool:
        run_training_step(setup, batch_size, precision, steps=chunk)
        return True

    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    out_of_memory = int(unless_out_of_memory(lambda: train(1)) is None)
    torch.cuda.synchronize()
    first_step_peak = torch.cuda.max_memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    done = 1
    while done < steps and time.perf_counter() - start < seconds:
        chunk = min(10, steps - done)
        out_of_memory += unless_out_of_memory(lambda: train(chunk)) is None
        done += chunk
    torch.cuda.synchronize()
    return {"batch_size": batch_size, "steps": done, "out_of_memory": out_of_memory, "first_step_peak_mib": first_step_peak / MiB,
            "peak_mib": torch.cuda.max_memory_allocated() / MiB, "seconds": time.perf_counter() - start}


def cuda_figures(module: SegmentationModule, settings: dict[str, Any], precisions: list[str], endurance_steps: int, endurance_seconds: float,
                 tuner: bool) -> dict[str, Any]:
    """Measured planning, estimate accuracy, throughput and out-of-memory errors in training per precision on the current GPU."""
    torch.backends.cudnn.benchmark = True  # as training runs (trainer.benchmark): trials' warm-up steps autotune
    module.cuda()
    setup = training_setup(module.recipe, module.net)
    results: dict[str, Any] = {}
    for precision in precisions:
        plan = search_on_device(setup, precision, max_batch_size=COMPARISON_MAX_BATCH_SIZE)
        estimate = fake_step(module.recipe, plan.batch_size, precision)  # fake tensors: nothing on the GPU
        results[precision] = {
            "trials": [{"batch_size": t.batch_size, "peak_mib": None if t.peak_bytes is None else t.peak_bytes / MiB,
                        "first_step_peak_mib": None if t.first_step_peak_bytes is None else t.first_step_peak_bytes / MiB} for t in plan.trials],
            "batch_size": plan.batch_size,
            "budget_mib": plan.budget_bytes / MiB,
            "predicted_peak_mib": plan.predicted_peak_bytes / MiB,
            "measured_peak_mib": plan.measured_peak_bytes / MiB,
            "first_step_peak_mib": None if plan.first_step_peak_bytes is None else plan.first_step_peak_bytes / MiB,
            "budget_used": plan.measured_peak_bytes / plan.budget_bytes,
            "estimator_peak_mib": estimate.peak_bytes / MiB,
            "estimator_error": estimate.peak_bytes / plan.measured_peak_bytes - 1,
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
        row["training_at_planned_size"] = endurance(setup, row["batch_size"], precision, endurance_steps, endurance_seconds)
        if tuner:
            found = row["lightning_tuner"] = lightning_tuner(settings, precision, row["batch_size"])
            release_memory()  # the tuner's trainer and module, held in reference cycles
            if found["batch_size"]:
                found["training"] = endurance(setup, found["batch_size"], precision, endurance_steps, endurance_seconds)
    return results


CPU_COLUMNS = ["precision", "peak b=1 (MiB)", "peak b=2 (MiB)", "fixed (MiB)", "per sample (MiB)", "per sample / FP32", "simulated batch", "estimator s"]
CUDA_COLUMNS = [
    "precision", "fixed MiB", "MiB/sample", "batch", "predicted peak MiB", "steady peak MiB", "first-step peak MiB", "budget used",
    "estimator vs steady", "training steady peak MiB", "training first-step peak MiB", "estimator vs training steady", "per sample / FP32",
    "plan s", "samples/s (largest)", "samples/s (common)", "OOM in training (steps)", "Lightning tuner batch (s)", "tuner's OOM in training (steps)",
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


def oom_cell(training: dict[str, Any] | None) -> str:
    return "" if training is None else f"{training['out_of_memory']} ({training['steps']})"


def cuda_cells(row: dict[str, Any], fp32_per_sample: float) -> list[str]:
    tuner, training = row.get("lightning_tuner"), row["training_at_planned_size"]
    steady_error = row["estimator_peak_mib"] / training["peak_mib"] - 1
    return [
        f"{row['fixed_mib']:.0f}", f"{row['per_sample_mib']:.1f}",
        str(row["batch_size"]), f"{row['predicted_peak_mib']:.0f}", f"{row['measured_peak_mib']:.0f}", cell(row["first_step_peak_mib"], ".0f"),
        f"{row['budget_used']:.1%}", cell(row["estimator_error"], "+.1%"), f"{training['peak_mib']:.0f}", f"{training['first_step_peak_mib']:.0f}",
        cell(steady_error, "+.1%"), f"{row['per_sample_mib'] / fp32_per_sample:.3f}", f"{row['plan_seconds']:.1f}",
        cell(row["samples_per_second_largest"], ".1f"), f"{cell(row['samples_per_second_common'], '.1f')} (b={row['common_batch_size']})",
        oom_cell(training), "not run" if tuner is None else f"{cell(tuner['batch_size'], 'd')} ({tuner['seconds']:.1f}, {tuner['max_trials']} trials)",
        "" if tuner is None else oom_cell(tuner.get("training")),
    ]


def markdown(result: dict[str, Any]) -> str:
    """Return the model, what the figures are (estimate or CUDA steps) and one row per precision."""
    lines = [
        f"- model: {result['model']}, patch {result['patch_size']}",
        *([f"- GPU memory capped at {result['gpu_memory_gib']:g} GiB for this process (torch.cuda.set_per_process_memory_fraction)"]
          if result.get("gpu_memory_gib") else []),
        "",
    ]
    if result["backend"] == "fake-tensor estimate":
        lines += [
            "Fake-tensor estimate, no GPU: every allocation of a training step on fake tensors (`medseg.planning.fake_tensor`:"
            " weights, gradients, fused AdamW state, batch, activations, backward's temporaries under each precision's CPU"
            f" autocast) at batch sizes 1 and 2; batch sizes are planned for a {result['capacity_gib']:g} GiB GPU with a 0.9"
            " budget. No GPU figures: the estimator-accuracy, budget-use, planning-time and throughput targets need a CUDA run.",
            "",
        ]
    else:
        lines += [
            "Steady peak: the steps after a trial's warm-up step, which the batch is planned on; first-step peak: the"
            " warm-up, where cuDNN autotunes the new shape with whatever memory is free under the cap.",
            "",
        ]
    header, cells = (CPU_COLUMNS, cpu_cells) if result["backend"] == "fake-tensor estimate" else (CUDA_COLUMNS, cuda_cells)
    fp32 = result["precisions"].get("32-true", {}).get("per_sample_mib", float("nan"))
    lines.append(markdown_rows([dict(zip(header, [precision, *cells(row, fp32)])) for precision, row in result["precisions"].items()]))
    return "\n".join(lines)


def model_settings(config: Path | None) -> dict[str, Any]:
    """Return the SegmentationModule arguments (network and patch) of a training config, or none for the defaults."""
    if config is None:
        return {}
    values = yaml.safe_load(config.read_text())
    model, data = values.get("model", {}), values.get("data", {})
    settings = {k: model[k] for k in ("network", "network_kwargs") if k in model}
    return settings | ({"patch_size": tuple(data["patch_size"])} if "patch_size" in data else {})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_output_option(parser, required=True)
    parser.add_argument("--capacity-gib", type=float, default=SIMULATED_CAPACITY_GIB, help="GPU memory planned for without a GPU")
    parser.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=list(PRECISIONS))
    parser.add_argument("--config", type=Path, default=None, help="a training config whose network and patch to plan (default: the demo's)")
    parser.add_argument("--gpu-memory-gib", type=float, default=None, help="cap this process's GPU memory (a smaller GPU on a large one)")
    parser.add_argument("--endurance-steps", type=int, default=200, help="training steps at each planned size, counting out-of-memory errors")
    parser.add_argument("--endurance-seconds", type=float, default=30.0, help="stop those steps after about this long")
    parser.add_argument("--tuner", action=argparse.BooleanOptionalAction, default=True, help="run Lightning's scale_batch_size side by side")
    options = parser.parse_args()
    torch.manual_seed(0)
    settings = model_settings(options.config)
    module = SegmentationModule(**settings)
    on_gpu = torch.cuda.is_available()
    if on_gpu and options.gpu_memory_gib:
        torch.cuda.set_per_process_memory_fraction(min(1.0, options.gpu_memory_gib * 2**30 / torch.cuda.mem_get_info()[1]))
    result: dict[str, Any] = {
        "backend": "cuda" if on_gpu else "fake-tensor estimate",
        "model": {"network": module.hparams.network, **module.hparams.network_kwargs},
        "patch_size": list(module.hparams.patch_size),
        "config": str(options.config) if options.config else "demo defaults",
        "gpu_memory_gib": options.gpu_memory_gib if on_gpu else None,
    }
    if on_gpu:
        precisions = [p for p in options.precisions if p != "bf16-mixed" or torch.cuda.is_bf16_supported()]
        result["precisions"] = cuda_figures(module, settings, precisions, options.endurance_steps, options.endurance_seconds, options.tuner)
    else:
        result["capacity_gib"] = options.capacity_gib
        result["precisions"] = cpu_figures(module, options.precisions, options.capacity_gib)
    write_results(options.output, "Batch planner memory benchmark", result, markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
