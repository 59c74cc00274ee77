"""Planning time and plans of medseg against nnU-Net v2's default planner on three generated datasets, and training start-up.

Datasets (``medseg.testing`` and the built-in demo, written once to a temporary folder):
  * ``demo``: medseg's built-in demo (``ensure_demo_dataset``: 24 CT-like phantoms, oblique affines, 1.1-1.4 mm in-plane, 2.5-3.5 mm slices);
  * ``mri``: 5 anisotropic 4-channel MRI-like cases (0.9 x 0.9 x 5.0-5.8 mm, 4D files);
  * ``ct``: 2 large CT-like cases (420 x 400 x 210 voxels at 0.8 x 0.8 x 1.5 mm).

For each dataset:
  * medseg: ``plan_for_training`` for a simulated 8 GiB GPU (nnU-Net v2's default planner targets 8 GB), in this
    process: first with an empty cache folder (dataset check and fingerprint, then the plan), then again (cached);
  * nnU-Net v2 (``--nnunet-python``, a separate environment: never a medseg dependency): the dataset converted to
    nnU-Net's raw layout (one file per channel), then ``nnUNetv2_plan_and_preprocess -d N --no_pp
    --verify_dataset_integrity -npfp CORES`` (dataset check, fingerprint, default ExperimentPlanner) as a subprocess,
    timed from process start (imports included), twice: the second run finds the fingerprint and plans again.
    Its 3d_fullres spacing, patch and strides are turned from nnU-Net's axis order (SimpleITK's z, y, x, then
    ``transpose_forward``) into medseg's x, y, z (RAS) order.

Training start-up on ``ct``: ``python -m medseg.train --data.root CT`` (no config: the plan is made or read from the
cache) as a subprocess with ``StopAtFirstStep``, which records the wall time when the callback is built (the plan
is made and the CLI parsed), at ``setup`` (the data module has checked the dataset and preprocessed every case
into memory: ``--data.cache=memory``) and at the first ``on_train_batch_start`` (first batch loaded), then ends
the process before any step runs. Twice on one cache folder: first (empty cache) and second (cached fingerprint
and plan; the in-memory preprocessing is redone).

    python -m benchmarks.planning --nnunet-python /tmp/nnunet-venv/bin/python --output benchmarks/results/planning/planning_cpu
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import torch
from lightning.pytorch.callbacks import Callback

from benchmarks.common import REPO, add_output_option, markdown_rows, write_results
from benchmarks.nnunet import nnunet_environment, nnunet_version, run_nnunet, to_nnunet_raw
from medseg.data.demo import ensure_demo_dataset
from medseg.data.formats import DatasetSpec, read_dataset
from medseg.io.nifti import in_ras_order
from medseg.planning.store import plan_for_training
from medseg.tables import format_rows
from medseg.testing import write_ct_like, write_mri_like

CAPACITY_GIB = 8.0  # nnU-Net v2's ExperimentPlanner default: gpu_memory_target_in_gb = 8
DATASETS = {"demo": ensure_demo_dataset, "mri": write_mri_like, "ct": write_ct_like}
NNUNET_IDS = {"demo": 901, "mri": 902, "ct": 903}
STARTUP_RECORD = "MEDSEG_BENCHMARK_STARTUP_RECORD"  # file StopAtFirstStep writes its times to
MiB = 2**20


class StopAtFirstStep(Callback):
    """Record wall-clock times (built, setup done, first batch loaded) to $MEDSEG_BENCHMARK_STARTUP_RECORD and end the
    process at the first training batch, so that no step runs (and no validation or checkpoint after it)."""

    def __init__(self) -> None:
        self.times = {"callback_built": time.time()}

    def setup(self, trainer, pl_module, stage) -> None:
        self.times["setup_done"] = time.time()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.times["first_batch_start"] = time.time()
        self.times["batch_shape"] = list(batch["image"].shape)
        Path(os.environ[STARTUP_RECORD]).write_text(json.dumps(self.times))
        # a callback cannot skip the step (only the module's hook can), and an exception would be reported as a crash
        os._exit(0)


def write_datasets(folder: Path) -> dict[str, Path]:
    """Write the three datasets under ``folder``; return their roots by name."""
    return {name: write(folder / name) for name, write in DATASETS.items()}


def medseg_plan(spec: DatasetSpec, cache_dir: Path) -> dict:
    """Return medseg's plan for a simulated 8 GiB GPU, timed with an empty ``cache_dir`` and then cached."""
    start = time.perf_counter()
    first = plan_for_training(spec, cache_dir, CAPACITY_GIB, show_progress=False)
    first_s = time.perf_counter() - start
    start = time.perf_counter()
    second = plan_for_training(spec, cache_dir, CAPACITY_GIB, show_progress=False)
    second_s = time.perf_counter() - start
    assert not first.cached and second.cached, "the second plan should come from the cache"
    plan, chosen = first.plan, first.plan.chosen
    return {
        "first_s": round(first_s, 2), "planner_s": round(plan.plan_seconds, 2), "cached_s": round(second_s, 3),
        "spacing": plan.spacing, "spacing_reason": plan.spacing_reason, "median_shape": plan.median_shape,
        "normalization": plan.normalization, "precision": chosen.precision, "patch_size": chosen.patch_size,
        "batch_size": chosen.batch_size, "batch_reason": chosen.batch_reason,
        "strides": chosen.network_kwargs["strides"], "channels": chosen.network_kwargs.get("channels") or chosen.network_kwargs["filters"],
        "peak_mib": round(chosen.peak_bytes / MiB), "budget_mib": round(chosen.budget_bytes / MiB),
        "capacity_gib": plan.capacity_bytes / 2**30, "memory_source": plan.memory_source,
        "other_precisions": [{"precision": p.precision, "patch_size": p.patch_size, "batch_size": p.batch_size,
                              "peak_mib": round(p.peak_bytes / MiB)} for p in plan.precisions if p is not chosen],
    }


def in_medseg_order(values, transpose_forward: list[int], affine) -> list:
    """Return nnU-Net per-axis values in medseg's (RAS) order.

    nnU-Net's SimpleITK reader gives arrays in (z, y, x) order of the file's voxel axes, and the planner then puts
    the coarsest axis first (``transpose_forward``): its axis ``i`` is the file's voxel axis ``2 - transpose_forward[i]``.
    """
    per_voxel_axis = [None] * 3
    for value, array_axis in zip(values, transpose_forward):
        per_voxel_axis[2 - array_axis] = value
    return list(in_ras_order(per_voxel_axis, affine))


def nnunet_command(dataset_id: int | str, check: bool, planner: str | None = None) -> list[str]:
    """Return nnU-Net's dataset check (``check``), fingerprint (unless one exists) and planner (default: its default
    planner; ``nnUNetPlannerResEncM``, say), without preprocessing."""
    return ["nnUNetv2_plan_and_preprocess", "-d", str(dataset_id), "--no_pp", *(["--verify_dataset_integrity"] if check else []),
            *(["-pl", planner] if planner else []), "-npfp", str(os.cpu_count()), "--no_pbar"]


def nnunet_plan(python: Path, spec: DatasetSpec, name: str, work: Path, planner: str | None = None, plans_name: str = "nnUNetPlans") -> dict:
    """Return the 3d_fullres plan (in medseg's axis order) of nnU-Net v2's ``planner`` (default: its default planner),
    which writes ``plans_name``.json, and its planning time, first run and second."""
    dataset_id = NNUNET_IDS[name]
    env = nnunet_environment(work)
    folder = to_nnunet_raw(spec, work / "nnUNet_raw", dataset_id, name)
    log = work / f"nnunet-{name}.log"
    try:
        first_s = run_nnunet(python, nnunet_command(dataset_id, True, planner), env, log)
        second_s = run_nnunet(python, nnunet_command(dataset_id, False, planner), env, log)
    except subprocess.CalledProcessError as err:
        return {"error": f"{Path(err.cmd[0]).name} failed (exit {err.returncode}): " + " | ".join(log.read_text().strip().splitlines()[-5:])}
    plans = json.loads((work / "nnUNet_preprocessed" / folder.name / f"{plans_name}.json").read_text())
    config = plans["configurations"]["3d_fullres"]
    transpose = plans["transpose_forward"]
    affine = nib.load(spec.cases[0].label).affine
    arch = config["architecture"]["arch_kwargs"]
    return {
        "first_s": round(first_s, 2), "second_s": round(second_s, 2),
        "spacing": [round(v, 4) for v in in_medseg_order(config["spacing"], transpose, affine)],
        "patch_size": in_medseg_order(config["patch_size"], transpose, affine),
        "median_shape": in_medseg_order(config["median_image_size_in_voxels"], transpose, affine),
        "batch_size": config["batch_size"], "normalization": config["normalization_schemes"],
        "strides": [in_medseg_order(s, transpose, affine) for s in arch["strides"]],
        "channels": arch["features_per_stage"], "blocks_per_stage": arch.get("n_blocks_per_stage"),
        "network": config["architecture"]["network_class_name"],
        "as_written": {"transpose_forward": transpose, "spacing": config["spacing"], "patch_size": config["patch_size"],
                       "median_image_size_in_voxels": config["median_image_size_in_voxels"]},
    }


def import_seconds(python: Path | str, module: str) -> float:
    """Return the wall seconds of a process that only imports ``module``: a command's start-up before it does anything."""
    start = time.perf_counter()
    subprocess.run([str(python), "-c", f"import {module}"], cwd=REPO, check=True, capture_output=True)
    return round(time.perf_counter() - start, 2)


def training_command(root: Path, cache_dir: Path, out: Path) -> list[str]:
    return [
        sys.executable, "-m", "medseg.train", f"--data.root={root}", f"--data.cache_dir={cache_dir}", "--data.cache=memory", "--data.num_workers=0",
        "--data.num_folds=2", "--trainer.accelerator=cpu", "--trainer.max_epochs=1", "--trainer.limit_val_batches=0",
        "--trainer.logger=false", f"--trainer.default_root_dir={out}", "--trainer.callbacks+=benchmarks.planning.StopAtFirstStep",
    ]


def training_start(root: Path, cache_dir: Path, out: Path, log: Path) -> dict:
    """Return seconds from launching ``python -m medseg.train`` to each point StopAtFirstStep records."""
    record = out / "startup.json"
    record.unlink(missing_ok=True)
    env = {**os.environ, STARTUP_RECORD: str(record)}
    launched = time.time()
    with log.open("a") as output:
        subprocess.run(training_command(root, cache_dir, out), cwd=REPO, env=env, stdout=output, stderr=subprocess.STDOUT, check=True)
    times = json.loads(record.read_text())
    return {
        "to_first_batch_s": round(times["first_batch_start"] - launched, 2),
        "to_callback_built_s": round(times["callback_built"] - launched, 2),
        "callback_built_to_setup_done_s": round(times["setup_done"] - times["callback_built"], 2),
        "setup_done_to_first_batch_s": round(times["first_batch_start"] - times["setup_done"], 2),
        "batch_shape": times["batch_shape"],
    }


def schemes_text(schemes: list[str]) -> str:
    """Return nnU-Net's per-channel normalisation schemes, one name when every channel has the same."""
    return f"{schemes[0]} (x{len(schemes)})" if len(schemes) > 1 and len(set(schemes)) == 1 else ", ".join(schemes)


def axes(values) -> str:
    return "x".join(f"{v:g}" for v in values)


def strides_text(strides) -> str:
    return " ".join(axes(s) for s in strides)


def comparison_rows(name: str, result: dict) -> list[dict]:
    """Return one row per planner for the text and markdown tables."""
    medseg, nnunet = result["medseg"], result.get("nnunet")
    norm = medseg["normalization"]["normalization"]
    rows = [{
        "dataset": name, "planner": f"medseg ({medseg['precision']})", "spacing mm (x,y,z)": axes(medseg["spacing"]),
        "patch (x,y,z)": axes(medseg["patch_size"]), "batch": medseg["batch_size"], "normalisation": norm,
        "strides (x,y,z)": strides_text(medseg["strides"]), "channels": "-".join(map(str, medseg["channels"])),
        "peak / budget MiB": f"{medseg['peak_mib']} / {medseg['budget_mib']}",
        "plan s (first)": f"{medseg['first_s']:.1f}", "plan s (again)": f"{medseg['cached_s']:.3f}",
    }]
    if nnunet is None:
        return rows
    if "error" in nnunet:
        rows.append({**{k: "" for k in rows[0]}, "dataset": name, "planner": "nnU-Net v2", "spacing mm (x,y,z)": "failed (see JSON)"})
        return rows
    rows.append({
        "dataset": name, "planner": "nnU-Net v2", "spacing mm (x,y,z)": axes(nnunet["spacing"]),
        "patch (x,y,z)": axes(nnunet["patch_size"]), "batch": nnunet["batch_size"], "normalisation": schemes_text(nnunet["normalization"]),
        "strides (x,y,z)": strides_text(nnunet["strides"][1:]), "channels": "-".join(map(str, nnunet["channels"])),
        "peak / budget MiB": "n/a (8 GB target)", "plan s (first)": f"{nnunet['first_s']:.1f}", "plan s (again)": f"{nnunet['second_s']:.1f}",
    })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nnunet-python", default=None, help="python of an environment with nnunetv2 (without it: medseg only)")
    add_output_option(parser)
    args = parser.parse_args()
    nnunet_python = Path(args.nnunet_python) if args.nnunet_python else None
    load_before = os.getloadavg()
    started = time.perf_counter()
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="medseg-planning-bench-") as tmp:
        work = Path(tmp)
        roots = write_datasets(work / "data")
        for name, root in roots.items():
            spec = read_dataset(root)
            results[name] = {"cases": len(spec.cases), "channels": list(spec.channel_names), "medseg": medseg_plan(spec, work / "cache" / name)}
            if nnunet_python:
                results[name]["nnunet"] = nnunet_plan(nnunet_python, spec, name, work / "nnunet")
            print(format_rows(comparison_rows(name, results[name])), flush=True)
        startup = {
            "command": "python " + shlex.join(training_command(Path("CT"), Path("CACHE"), Path("OUT"))[1:]),
            "first": training_start(roots["ct"], work / "train-cache", work / "train", work / "train.log"),
            "second": training_start(roots["ct"], work / "train-cache", work / "train", work / "train.log"),
        }
        print(format_rows(startup_rows(startup)), flush=True)
        process_start = {"medseg.train": import_seconds(sys.executable, "medseg.training.cli")}
        if nnunet_python:
            process_start["nnUNetv2_plan_and_preprocess"] = import_seconds(nnunet_python, "nnunetv2.experiment_planning.plan_and_preprocess_api")
    report = {
        "cpu_threads": torch.get_num_threads(),
        "load_average_before_after": [round(v, 2) for v in (*load_before, *os.getloadavg())],
        "seconds": round(time.perf_counter() - started),
        "nnunetv2": nnunet_version(nnunet_python) if nnunet_python else None,
        "capacity_gib": CAPACITY_GIB,
        "process_start_s": process_start,
        "datasets": results,
        "training_startup_ct": startup,
    }
    write_results(args.output, "Planning: medseg against nnU-Net v2", report, markdown(report))


def startup_rows(startup: dict) -> list[dict]:
    """Return the training start-up table: one row per start, seconds from launch and per phase."""
    return [
        {"start": label, "launch to first batch s": s["to_first_batch_s"], "launch to plan ready s": s["to_callback_built_s"],
         "dataset check + preprocessing s": s["callback_built_to_setup_done_s"], "first batch s": s["setup_done_to_first_batch_s"]}
        for label, s in (("first (empty cache)", startup["first"]), ("second (same cache)", startup["second"]))
    ]


def targets_text(report: dict) -> str:
    """Return the issue's targets (plan < 60 s per dataset, cached plan < 1 s) against the measured seconds."""
    plans = {name: r["medseg"] for name, r in report["datasets"].items()}
    slowest = max(plans, key=lambda name: plans[name]["first_s"])
    slowest_cached = max(plans, key=lambda name: plans[name]["cached_s"])
    first_ok = "met" if plans[slowest]["first_s"] < 60 else "missed"
    cached_ok = "met" if plans[slowest_cached]["cached_s"] < 1 else "missed"
    return (f"Targets (issue 12): planning under 60 s per dataset on this CPU: {first_ok} (slowest: {slowest}, "
            f"{plans[slowest]['first_s']:.1f} s); cached plan under 1 s: {cached_ok} (slowest: {slowest_cached}, {plans[slowest_cached]['cached_s']:.3f} s).")


def markdown(report: dict) -> str:
    """Return how both planners ran, one row per dataset and planner, the targets and the training start-up table."""
    datasets, startup = report["datasets"], report["training_startup_ct"]
    rows = [row for name, result in datasets.items() for row in comparison_rows(name, result)]
    failures = [f"- {name}: {result['nnunet']['error']}" for name, result in datasets.items() if "error" in result.get("nnunet", {})]
    medians = "; ".join(
        f"{name}: medseg {axes(r['medseg']['median_shape'])}"
        + (f", nnU-Net {axes(in_order)}" if (in_order := r.get("nnunet", {}).get("median_shape")) else "")
        for name, r in datasets.items()
    )
    starts = report["process_start_s"]
    nnunet = report["nnunetv2"]
    cores = os.cpu_count()
    nnunet_text = (
        f"nnU-Net's times are its command from process start: first `{shlex.join(nnunet_command('N', True))}` "
        f"(dataset check, fingerprint, default ExperimentPlanner; `-npfp {cores}`: one process per core, as medseg's check reads), "
        f"then `{shlex.join(nnunet_command('N', False))}`, which finds the fingerprint and plans again "
        f"(nnU-Net caches no plan). A process that only imports nnU-Net's planning takes {starts.get('nnUNetv2_plan_and_preprocess')} s "
        f"of each; one that only imports medseg's training CLI {starts['medseg.train']} s.\n\n"
        if nnunet else "nnU-Net was not run (no `--nnunet-python`).\n\n"
    )
    return (
        f"{f'nnunetv2 {nnunet} (its own environment); ' if nnunet else ''}Load average (1, 5, 15 min) "
        f"before and after: {report['load_average_before_after']} (a machine shared with other work); {report['seconds']} s in all.\n\n"
        f"Both plan for an {report['capacity_gib']:g} GiB GPU: medseg simulates one (a fake-tensor estimate of each candidate's step; "
        "budget 90 % of it; its row is the precision its config asks for: mixed, what a GPU runs); nnU-Net's default planner targets 8 GB through its "
        "own feature-map-count estimate, which it does not report. Spacing, patch and strides are in medseg's x, y, z (RAS) order "
        "for both: nnU-Net writes them in SimpleITK's z, y, x order, coarsest axis first (`transpose_forward`), and the JSON keeps "
        "them as written too. Strides: one x,y,z triple per pooling level (nnU-Net's first stage, stride 1, left out); channels: "
        "per level. The networks differ: medseg's MONAI UNet convolves with stride 2 from its first layer, so it holds no "
        "full-resolution feature maps, while nnU-Net's PlainConvUNet runs its first 32 channels at full resolution: where memory "
        "limits the patch, the same GPU holds a larger one in medseg. Where the median shape limits it, medseg stays within the "
        "median shape and nnU-Net rounds up to a multiple of its pooling.\n\n"
        "medseg's `plan s (first)` is `plan_for_training` in the benchmark's process with an empty cache folder (dataset check and "
        "fingerprint, one read of every file, then the plan); `plan s (again)` the same call again, answered from the cache. "
        + nnunet_text
        + markdown_rows(rows)
        + ("\n\nnnU-Net failures:\n" + "\n".join(failures) if failures else "")
        + f"\n\nMedian shape at the target spacing (x,y,z): {medians}.\n\n"
        + targets_text(report)
        + "\n\n## Training start-up, ct dataset\n\n"
        f"`{startup['command']}`, run twice on one cache folder. `StopAtFirstStep` records wall-clock times and ends the process "
        "when the first training batch is loaded, before any step. `launch to plan ready`: interpreter, imports, the dataset "
        "check and plan (first start) or the cached plan (second), CLI parsing; `dataset check + preprocessing`: the data module's "
        "check (its fingerprint cached by the plan) and `--data.cache=memory` preprocessing every training and validation case "
        "(redone on every start: the memory cache does not outlive the process); `first batch`: model set-up and loading the "
        f"first batch (shape {startup['first']['batch_shape']}).\n\n"
        + markdown_rows(startup_rows(startup))
    )


if __name__ == "__main__":
    main()
