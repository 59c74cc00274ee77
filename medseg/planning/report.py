"""What planning shows: the precision comparison (a text table, a JSON file and a plot of peak memory against batch size)
and the dataset plan (a text table and a figure), with the columns they share named alike."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.figure import Figure

from medseg.atomic import atomic_target, write_text_atomic
from medseg.option_values import RESENC_PRESETS
from medseg.planning.batch_search import BatchSearchResult
from medseg.tables import format_rows

if TYPE_CHECKING:
    from medseg.planning.dataset_plan import DatasetPlan

MiB = 2**20


def comparison(results: Sequence[BatchSearchResult]) -> list[dict[str, Any]]:
    """Return one row per precision: steady-state memory line, verified batch, its steady and first-step (cuDNN
    autotuning) peaks, throughput, the fake-tensor estimate against the measured steady state, and ratios to 32-true."""
    reference = next((p for p in results if p.precision == "32-true"), None)
    rows = []
    for result in results:
        row = {
            "precision": result.precision,
            "fixed_mib": result.fixed_bytes / MiB,
            "per_sample_mib": result.per_sample_bytes / MiB,
            "batch_size": result.batch_size,
            "measured_peak_mib": result.measured_peak_bytes / MiB,
            "first_step_peak_mib": None if result.first_step_peak_bytes is None else result.first_step_peak_bytes / MiB,
            "budget_mib": result.budget_bytes / MiB,
            "budget_used": result.measured_peak_bytes / result.budget_bytes,
            "samples_per_second": result.samples_per_second,
            "estimated_peak_mib": None if result.estimated_peak_bytes is None else result.estimated_peak_bytes / MiB,
            "estimate_error": None if result.estimated_peak_bytes is None or result.backend != "cuda" else result.estimated_peak_bytes / result.measured_peak_bytes - 1,
            "plan_seconds": result.plan_seconds,
            "per_sample_ratio_to_fp32": None,
            "fixed_ratio_to_fp32": None,
        }
        if reference is not None and reference.per_sample_bytes > 0 and reference.fixed_bytes > 0:
            row["per_sample_ratio_to_fp32"] = result.per_sample_bytes / reference.per_sample_bytes
            row["fixed_ratio_to_fp32"] = result.fixed_bytes / reference.fixed_bytes
        rows.append(row)
    return rows


def _shared_cells(precision: str, batch_size: int, peak_bytes: float, budget_bytes: int, samples_per_second: float | None) -> dict[str, str]:
    """Return the columns the plan and the precision comparison both show, named and rounded alike."""
    return {
        "precision": precision, "batch": str(batch_size), "steady peak MiB": f"{peak_bytes / MiB:.0f}",
        "budget MiB": f"{budget_bytes / MiB:.0f}", "samples/s": _cell(samples_per_second, 1),
    }


def _cell(value: Any, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def format_table(results: Sequence[BatchSearchResult]) -> str:
    """Return the comparison as an aligned text table with the device and backend on top."""
    columns = [
        ("fixed MiB", "fixed_mib", 1), ("MiB/sample", "per_sample_mib", 2), ("first-step peak MiB", "first_step_peak_mib", 0),
        ("estimate vs steady", "estimate_error", 3), ("per-sample vs fp32", "per_sample_ratio_to_fp32", 3),
        ("fixed vs fp32", "fixed_ratio_to_fp32", 3),
    ]
    rows = [
        _shared_cells(result.precision, result.batch_size, result.measured_peak_bytes, result.budget_bytes, result.samples_per_second)
        | {title: _cell(row[key], digits) for title, key, digits in columns}
        for result, row in zip(results, comparison(results))
    ]
    first = results[0]
    header = (f"device: {first.device_name} ({first.backend}); steady peak: the steps after the first, within the budget;"
              " the first step at a new shape also autotunes cuDNN, up to the cap")
    return f"{header}\n{format_rows(rows)}"


def format_plan(plan: DatasetPlan) -> str:
    """Return the plan's precisions side by side as a text table, with the dataset-wide decisions on top."""
    rows = [
        _shared_cells(c.precision, c.batch_size, c.peak_bytes, c.budget_bytes, c.samples_per_second.get(c.batch_size))
        | {"patch": "x".join(map(str, c.patch_size)), "levels": str(len(c.network_kwargs["strides"]) + (c.network == "UNet"))}  # resolutions
        for c in plan.precisions
    ]
    header = [
        f"dataset: {plan.dataset}", f"memory: {plan.memory_source}, GPU {plan.capacity_bytes / 2**30:g} GiB",
        f"spacing: {plan.spacing} mm ({plan.spacing_reason}); median shape there {plan.median_shape}",
        f"normalization: {plan.normalization} ({plan.normalization_reason})",
        f"network: {plan.precisions[0].network} ({plan.network_reason})",
        *([preset_line(plan)] if plan.preset else []),
    ]
    return "\n".join(header) + "\n" + format_rows(rows)


def preset_line(plan: DatasetPlan) -> str:
    """Return medseg's peak for the plan's preset beside nnU-Net's target and measured peak for it."""
    target, measured = RESENC_PRESETS[plan.preset]
    chosen = plan.chosen
    return (
        f"preset {plan.preset}: nnU-Net targets {target} GB (measured {measured} GB on an A100); medseg plans "
        f"{chosen.peak_bytes / 2**30:.1f} GiB at {chosen.precision} ({plan.memory_source}) within {chosen.budget_bytes / 2**30:.1f} GiB"
    )


def plot_memory(
    peak_bytes: Mapping[str, Mapping[int, float]],
    budget_bytes: float | None = None,
    title: str = "Training step peak memory",
    failed_batch_sizes: Mapping[str, Sequence[int]] | None = None,
) -> Figure:
    """Return peak memory (MiB) against batch size, one line per precision, with the budget as a dashed line.

    Args:
        peak_bytes: precision (e.g. "32-true", "16-mixed") -> {batch size: peak bytes}; plain data, so
            measured trials, estimator figures or a fitted line's values all plot the same way.
        budget_bytes: memory a step may use; None draws no budget line.
        title: figure title (say which device or estimator the numbers come from).
        failed_batch_sizes: precision -> batch sizes that ran out of memory, drawn as crosses on the budget line.
    """
    figure = Figure(figsize=(7, 4.5), layout="constrained")
    axes = figure.subplots()
    for precision, peaks in peak_bytes.items():
        sizes = sorted(peaks)
        [line] = axes.plot(sizes, [peaks[b] / MiB for b in sizes], marker="o", label=precision)
        failed = (failed_batch_sizes or {}).get(precision, [])
        if failed and budget_bytes is not None:
            axes.scatter(failed, [budget_bytes / MiB] * len(failed), marker="x", color=line.get_color(), label=f"{precision}: out of memory")
    if budget_bytes is not None:
        axes.axhline(budget_bytes / MiB, color="black", linestyle="--", label=f"budget {budget_bytes / MiB:.0f} MiB")
    axes.set(title=title, xlabel="batch size (patches per step)", ylabel="peak memory (MiB)")
    axes.legend()
    return figure


def save_plot(results: Sequence[BatchSearchResult], path: Path) -> None:
    """Plot each precision's steady-state trial peaks against batch size, out-of-memory trials and the budget drawn in,
    and the first steps' peaks (cuDNN autotuning) as hollow markers beside them."""
    peaks = {result.precision: {t.batch_size: t.peak_bytes for t in result.trials if t.fits} for result in results}
    failed = {result.precision: [t.batch_size for t in result.trials if not t.fits] for result in results}
    first = results[0]
    title = f"Training step peak memory (steady state)\n{first.device_name} ({first.backend})"
    figure = plot_memory(peaks, first.budget_bytes, title, failed)
    axes = figure.axes[0]
    for result, line in zip(results, axes.get_lines()):
        first_steps = sorted((t.batch_size, t.first_step_peak_bytes) for t in result.trials if t.fits and t.first_step_peak_bytes is not None)
        if first_steps:
            axes.scatter([b for b, _ in first_steps], [p / MiB for _, p in first_steps], facecolors="none",
                         edgecolors=line.get_color(), label=f"{result.precision}: first step (autotuning)")
    axes.legend()
    with atomic_target(path) as temp:
        figure.savefig(temp, dpi=120, format="png")


def save_report(results: Sequence[BatchSearchResult], folder: str | Path) -> tuple[Path, Path]:
    """Write ``memory_report.json`` (each precision's batch search and their comparison) and ``memory_report.png`` into ``folder``; return both paths."""
    folder = Path(folder)
    json_path, png_path = folder / "memory_report.json", folder / "memory_report.png"
    data = {"comparison": comparison(results), "batch_searches": [r.to_dict() for r in results]}
    write_text_atomic(json_path, json.dumps(data, indent=2))
    save_plot(results, png_path)
    return json_path, png_path


def plot_plan(plan: DatasetPlan) -> Figure:
    """Return, per precision, the planned patch (voxels) and the step's peak against the budget, and samples/s where a
    GPU timed the steps; fake-tensor plans time nothing, so their figure leaves that panel out instead of drawing it empty."""
    configs = plan.precisions
    timed = [c for c in configs if c.samples_per_second]
    figure = Figure(figsize=(11 if timed else 7.5, 4), layout="constrained")
    patch_axes, peak_axes, *speed_axes = figure.subplots(1, 3 if timed else 2)
    names = [c.precision for c in configs]
    patch_axes.bar(names, [np.prod(c.patch_size) / 1e6 for c in configs])
    patch_axes.set(title="patch", ylabel="voxels per patch (millions)")
    for config, bar in zip(configs, peak_axes.bar(names, [c.peak_bytes / MiB for c in configs])):
        peak_axes.annotate(f"batch {config.batch_size}", (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom")
    budget = configs[0].budget_bytes
    peak_axes.axhline(budget / MiB, color="black", linestyle="--", label=f"budget {budget / MiB:.0f} MiB")
    peak_axes.set(title="peak memory at the planned batch", ylabel="MiB")
    peak_axes.legend()
    for axes in speed_axes:
        for config in timed:
            sizes = sorted(config.samples_per_second)
            axes.plot(sizes, [config.samples_per_second[b] for b in sizes], marker="o", label=config.precision)
        axes.set(title="throughput", xlabel="batch size", ylabel="samples/s")
        axes.legend()
    figure.suptitle(f"{Path(plan.dataset).name}: {plan.memory_source}, GPU {plan.capacity_bytes / 2**30:g} GiB")
    return figure
