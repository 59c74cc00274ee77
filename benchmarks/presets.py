"""nnU-Net's residual-encoder presets M, L and XL as medseg plans them, beside nnU-Net's own plans and figures (issue 35).

On a CT-like dataset where memory sets the patch (``medseg.testing.write_ct_like``: 420 x 400 x 210 voxels at
0.8 x 0.8 x 1.5 mm), medseg plans nnU-Net's default network for an 8 GiB GPU and each preset
(``plan_for_training(preset=...)``: the residual-encoder network, blocks 1, 3, 4, 6, ... per stage, for a GPU of the
preset's size, 90 % of it the budget) at 16-mixed, with fake-tensor steps. Its patch, batch and estimated steady-state
peak stand beside nnU-Net's target and its measured peak (documentation/resenc_presets.md, an A100 40 GB) and, with
``--nnunet-python``, beside the patch and batch nnU-Net's own planner (``-pl nnUNetPlannerResEncM``, ...) chooses for
the same data. On a CUDA GPU with at least the preset's memory, the planned patch and batch are also trained for real
(``cuda_recipe_step_cost``: steps at steady state, cuDNN autotuning on, as the planner measures) and the measured
peak stands beside the estimate::

    python -m benchmarks.presets --nnunet-python /tmp/nnunet-venv/bin/python --output benchmarks/results/presets/presets_cpu
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import add_output_option, markdown_rows, write_results
from benchmarks.planning import nnunet_plan
from medseg.data.formats import read_dataset
from medseg.option_values import RESENC_PRESETS, SIMULATED_CAPACITY_GIB
from medseg.planning.dataset_plan import planned_optimizer
from medseg.planning.store import plan_for_training
from medseg.recipe import Recipe
from medseg.testing import write_ct_like

PRECISION = "16-mixed"
GiB = 2**30
# (medseg's network, preset) and nnU-Net's planner and plans file for the same
PLANS = {
    "default": ("plain", None, None, "nnUNetPlans"),
    **{preset: ("resenc", preset, f"nnUNetPlannerResEnc{preset}", f"nnUNetResEncUNet{preset}Plans") for preset in RESENC_PRESETS},
}


def measured_peak(plan) -> float | None:
    """Return the steady-state peak (bytes) of the plan's patch and batch trained on this CUDA GPU, or None where there
    is none or it has less memory than the plan is for."""
    if not torch.cuda.is_available() or torch.cuda.get_device_properties(0).total_memory < plan.capacity_bytes:
        return None
    from medseg.planning.cuda_steps import cuda_recipe_step_cost

    chosen = plan.chosen
    recipe = Recipe(chosen.network, chosen.network_kwargs, plan.channel_names, plan.class_names, tuple(chosen.patch_size),
                    precision=chosen.precision, optimizer=planned_optimizer(plan.network))
    return cuda_recipe_step_cost(recipe, chosen.precision)(chosen.batch_size).peak_bytes


def medseg_row(spec, cache: Path, network: str, preset: str | None) -> dict:
    """Return medseg's plan of ``network`` for ``preset`` (None: nnU-Net's default 8 GB target) and its peaks."""
    start = time.perf_counter()
    capacity = None if preset else SIMULATED_CAPACITY_GIB
    plan = plan_for_training(spec, cache, capacity, (PRECISION,), show_progress=False, network=network, preset=preset).plan
    seconds = time.perf_counter() - start
    chosen = plan.chosen
    measured = measured_peak(plan)
    return {
        "network": network, "capacity_gib": plan.capacity_bytes / GiB, "patch_size": chosen.patch_size, "batch_size": chosen.batch_size,
        "batch_reason": chosen.batch_reason, "blocks_per_stage": chosen.network_kwargs.get("blocks_per_stage"),
        "filters": chosen.network_kwargs["filters"], "estimated_peak_gib": round(chosen.peak_bytes / GiB, 2),
        "budget_gib": round(chosen.budget_bytes / GiB, 2), "measured_peak_gib": None if measured is None else round(measured / GiB, 2),
        "memory_source": plan.memory_source, "plan_seconds": round(seconds, 1), "candidates": chosen.candidates,
    }


def rows(results: dict) -> list[dict]:
    """Return one table row per plan: nnU-Net's target and measured peak, medseg's plan and peaks, nnU-Net's plan."""
    table = []
    for name, result in results.items():
        medseg, nnunet = result["medseg"], result.get("nnunet") or {}
        target, nnunet_measured = RESENC_PRESETS.get(name, (8, None))
        table.append({
            "plan": name if name != "default" else "default (plain)",
            "nnU-Net target / measured GB": f"{target} / {nnunet_measured if nnunet_measured else 'n/a'}",
            "medseg patch (x,y,z)": "x".join(map(str, medseg["patch_size"])), "batch": medseg["batch_size"],
            "medseg estimate GiB": medseg["estimated_peak_gib"], "budget GiB": medseg["budget_gib"],
            "measured GiB": medseg["measured_peak_gib"] if medseg["measured_peak_gib"] is not None else "n/a",
            "nnU-Net patch (x,y,z)": "x".join(map(str, nnunet["patch_size"])) if "patch_size" in nnunet else "n/a",
            "nnU-Net batch": nnunet.get("batch_size", "n/a"),
        })
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nnunet-python", type=Path, default=None, help="python of an environment with nnunetv2 (without it: no nnU-Net plans)")
    add_output_option(parser)
    args = parser.parse_args()
    load_before, started = os.getloadavg(), time.perf_counter()
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="medseg-presets-") as tmp:
        work = Path(tmp)
        spec = read_dataset(write_ct_like(work / "ct"))
        for name, (network, preset, planner, plans_name) in PLANS.items():
            results[name] = {"medseg": medseg_row(spec, work / "cache", network, preset)}
            if args.nnunet_python:
                results[name]["nnunet"] = nnunet_plan(args.nnunet_python, spec, "ct", work / "nnunet" / name, planner, plans_name)
            print(markdown_rows(rows({name: results[name]})), flush=True)
    text = "\n".join([
        f"medseg's plans at {PRECISION} on the CT-like dataset of the planning tests (2 cases of 420 x 400 x 210 voxels at "
        "0.8 x 0.8 x 1.5 mm), each preset for a GPU of its target's size (budget 90 % of it), the default for 8 GiB, the "
        "estimate on fake tensors; `measured GiB`: the same patch and batch trained on this machine's GPU (n/a without "
        "one, or with less memory). nnU-Net's targets and measured peaks (an A100 40 GB) are from its "
        "documentation/resenc_presets.md; its patch and batch are its own planner's for the same data "
        f"(`nnUNetv2_plan_and_preprocess -pl ...`). Load average before and after: "
        f"{[round(v, 2) for v in (*load_before, *os.getloadavg())]}; {time.perf_counter() - started:.0f} s in all.",
        "",
        markdown_rows(rows(results)),
    ])
    write_results(args.output, "nnU-Net's residual-encoder presets: medseg's plans beside nnU-Net's", {"precision": PRECISION, "plans": results}, text)
    print(text)


if __name__ == "__main__":
    main()
