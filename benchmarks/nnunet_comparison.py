"""Dice and HD95 per class of medseg against nnU-Net v2 for the same CPU time, on the fine-structures phantoms (issue 35).

The data (``medseg.data.demo.fine_structures``): CT-like phantoms at 0.8 x 0.8 x 2.5 mm with a large organ, vessels
about 2 voxels wide and lesions about 5 voxels across, where a network that loses detail scores lower. ``--train``
cases to train on (data seed ``--data-seed``) and ``--test`` held-out cases (the next data seed), never trained on.

Contenders, one after the other, each trained once per ``--seeds`` for ``--cpu-seconds`` of CPU time of its
training process (``time.process_time``: every thread, counted from the first step's readiness, so planning,
preprocessing and set-up are not in it; checked before each step, so a run ends at most one step or one validation
late, and the record says how late). Data loading runs in that process for both (medseg ``--data.num_workers 0``,
nnU-Net ``nnUNet_n_proc_DA=0``), so that its CPU time is counted too. Each trains on fold 0 of 5 (80 % of the
training cases; each tool splits with its own seed) in fp32 (what nnU-Net runs on a CPU). ``--jobs N`` trains N runs
at a time with the machine's cores shared out (``OMP_NUM_THREADS``; nnU-Net's trainer, which sets its own thread count
on a CPU, is set back to it), so that a 2-core machine runs two 1-thread trainings side by side:

* ``medseg, tutorial UNet``: ``python -m medseg.train --data.root TRAIN --network tutorial`` (the plan for MONAI's
  spleen-tutorial UNet, with medseg's AdamW and augmentation), ``--trainer.max_epochs 1000`` (as nnU-Net's 1000
  epochs: the budget ends training, not the schedule) and the ``CpuBudget`` callback, which also writes the final
  checkpoint; then ``python -m medseg.infer`` on the held-out cases;
* ``medseg, nnU-Net-class plan``: the same with ``--network plain``, the planner's default (nnU-Net's PlainConvUNet
  class as a MONAI DynUNet, deep supervision, nnU-Net's SGD and augmentation: issue 35 items 1-3);
* ``nnU-Net v2 3d_fullres`` (``--nnunet-python``, its own environment): ``nnUNetv2_plan_and_preprocess -c
  3d_fullres`` (once), ``nnUNetv2_train ID 3d_fullres 0 -tr nnUNetTrainer_CpuBudget -device cpu``, a trainer this
  benchmark writes into nnU-Net's ``variants`` folder that is nnU-Net's default trainer ended when the budget is
  spent (and without its final validation of the fold: the held-out cases are scored instead), then
  ``nnUNetv2_predict`` with its defaults (mirroring test-time augmentation included).

Every contender's predictions are scored with medseg's evaluation (``medseg.evaluation.evaluate``). Writes
OUTPUT.json, OUTPUT.md (per class Dice and HD95, mean and spread over the seeds) and OUTPUT.png::

    python -m benchmarks.nnunet_comparison --nnunet-python /tmp/nnunet-venv/bin/python --cpu-seconds 1500 --seeds 0 1 \\
        --jobs 2 --shape 96 96 32 --output benchmarks/results/nnunet_comparison/nnunet_comparison_cpu
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import math
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback

from benchmarks.common import REPO, add_output_option, markdown_rows, write_results
from benchmarks.nnunet import nnunet_environment, nnunet_version, run_nnunet, to_nnunet_images, to_nnunet_raw

BUDGET = "MEDSEG_BENCHMARK_CPU_SECONDS"  # the CPU seconds a training process may spend on training
RECORD = "MEDSEG_BENCHMARK_RECORD"  # the JSON file a budgeted training writes what it did to
THREADS = "MEDSEG_BENCHMARK_THREADS"  # the threads a training may use (nnU-Net sets every core's on a CPU: set back)
DATASET_ID, DATASET_NAME = 935, "FineStructures"
TRAINER = "nnUNetTrainer_CpuBudget"
TUTORIAL, NNUNET_CLASS, NNUNET = "medseg, tutorial UNet", "medseg, nnU-Net-class plan", "nnU-Net v2 3d_fullres"

# nnU-Net's default trainer, ended by the CPU budget: the same test of time.process_time() as CpuBudget below
TRAINER_SOURCE = f'''"""Written by medseg's benchmarks/nnunet_comparison.py: nnU-Net's default trainer, ended once the training process
has spent ${BUDGET} CPU seconds after on_train_start; what it did goes to ${RECORD}. The fold's final
validation is skipped: the benchmark scores held-out cases itself."""
import json
import os
import time

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class BudgetSpent(Exception):
    pass


class {TRAINER}(nnUNetTrainer):
    def on_train_start(self):
        super().on_train_start()
        torch.set_num_threads(int(os.environ["{THREADS}"]))
        self.budget_steps = 0
        self.budget_start = (time.process_time(), time.perf_counter())
        self.budget_end = self.budget_start[0] + float(os.environ["{BUDGET}"])

    def check_budget(self):
        if time.process_time() >= self.budget_end:
            raise BudgetSpent

    def train_step(self, batch):
        self.check_budget()
        self.budget_steps += 1
        return super().train_step(batch)

    def validation_step(self, batch):
        self.check_budget()
        return super().validation_step(batch)

    def run_training(self):
        try:
            super().run_training()
        except BudgetSpent:
            self.on_train_end()
        record = {{"steps": self.budget_steps, "epochs": self.current_epoch + 1,
                  "cpu_seconds": time.process_time() - self.budget_start[0],
                  "wall_seconds": time.perf_counter() - self.budget_start[1],
                  "setup_cpu_seconds": self.budget_start[0], "threads": torch.get_num_threads(), "torch": torch.__version__,
                  "batch_size": self.batch_size, "patch_size": list(self.configuration_manager.patch_size),
                  "network": self.configuration_manager.network_arch_class_name.rsplit(".", 1)[-1]}}
        with open(os.environ["{RECORD}"], "w") as f:
            json.dump(record, f)

    def perform_actual_validation(self, save_probabilities=False):
        pass
'''


class CpuBudget(Callback):
    """End medseg's training once its process has spent $MEDSEG_BENCHMARK_CPU_SECONDS of CPU time after
    ``on_train_start``, save the weights as they are then (``final.ckpt`` beside the record) and write what it did
    to $MEDSEG_BENCHMARK_RECORD."""

    def on_train_start(self, trainer, pl_module) -> None:
        self.start = (time.process_time(), time.perf_counter())
        self.end = self.start[0] + float(os.environ[BUDGET])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.batch_shape = list(batch["image"].shape)
        if time.process_time() >= self.end:
            trainer.should_stop = True

    def on_train_end(self, trainer, pl_module) -> None:
        record = Path(os.environ[RECORD])
        checkpoint = record.with_name("final.ckpt")
        trainer.save_checkpoint(checkpoint)
        record.write_text(json.dumps({
            "steps": trainer.global_step, "epochs": trainer.current_epoch,  # the last one cut short
            "cpu_seconds": time.process_time() - self.start[0], "wall_seconds": time.perf_counter() - self.start[1],
            "setup_cpu_seconds": self.start[0], "threads": torch.get_num_threads(), "torch": torch.__version__,
            "checkpoint": str(checkpoint), "network": pl_module.recipe.network, "network_kwargs": pl_module.recipe.network_kwargs,
            "batch_shape": self.batch_shape,
        }))


def class_scores(predictions: Path, truth: Path) -> dict[str, dict[str, float]]:
    """Return each class's mean Dice and HD95 (mm) over the held-out cases (``medseg.evaluation``)."""
    from medseg.errors import library_noise_hidden
    from medseg.evaluation import evaluate

    with library_noise_hidden():  # MONAI's deprecation notices, as the commands hide them
        result = evaluate(predictions, truth)
    means = {metric: result.class_means(metric) for metric in ("dice", "hd95_mm")}
    return {name: {metric: means[metric][name] for metric in means} for name in result.class_names}


def medseg_training_command(train: Path, cache_dir: Path, out: Path, seed: int, options: Sequence[str]) -> list[str]:
    """Return the ``python -m medseg.train`` command of a budgeted medseg contender."""
    return [
        sys.executable, "-m", "medseg.train", f"--data.root={train}", f"--data.cache_dir={cache_dir}", "--data.num_workers=0",
        "--data.fold=0", "--data.num_folds=5", f"--seed_everything={seed}", "--trainer.accelerator=cpu", "--trainer.precision=32-true",
        "--trainer.max_epochs=1000", "--speed.compile=false", f"--output={out}", "--trainer.callbacks+=benchmarks.nnunet_comparison.CpuBudget",
        *options,
    ]


def budget_environment(seconds: float, record: Path, threads: int) -> dict[str, str]:
    """Return the variables a budgeted training reads: its CPU seconds, its record file and its threads."""
    return {BUDGET: str(seconds), RECORD: str(record), THREADS: str(threads), "OMP_NUM_THREADS": str(threads)}


def run_medseg(train: Path, test: Path, work: Path, seed: int, seconds: float, threads: int, options: Sequence[str]) -> dict:
    """Train one medseg contender for ``seconds`` of CPU time, segment the held-out cases; return its record and scores."""
    work.mkdir(parents=True)
    record, log = work / "record.json", work / "log.txt"
    env = {**os.environ, **budget_environment(seconds, record, threads)}
    with log.open("a") as out:
        command = medseg_training_command(train, work / "cache", work / "runs", seed, options)
        subprocess.run(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, check=True)
        done = json.loads(record.read_text())
        start = time.perf_counter()
        infer = [sys.executable, "-m", "medseg.infer", "--checkpoint", done["checkpoint"], "-i", str(test), "-o", str(work / "predictions"), "--device", "cpu"]
        subprocess.run(infer, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, check=True)
    return {**done, "inference_wall_seconds": time.perf_counter() - start, "scores": class_scores(work / "predictions", test)}


def install_trainer(python: Path) -> Path:
    """Write ``TRAINER_SOURCE`` into the nnU-Net environment's trainer variants (where ``-tr`` finds it); return its path."""
    command = [str(python), "-c", "import nnunetv2.training.nnUNetTrainer.variants as v; print(v.__path__[0])"]
    variants = Path(subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip())
    path = variants / f"{TRAINER}.py"
    path.write_text(TRAINER_SOURCE)
    return path


def prepare_nnunet(python: Path, train: Path, test: Path, work: Path) -> dict:
    """Write the data in nnU-Net's layout, install the budgeted trainer, plan and preprocess 3d_fullres; return how long it took."""
    from medseg.data.formats import read_dataset

    to_nnunet_raw(read_dataset(train), work / "nnUNet_raw", DATASET_ID, DATASET_NAME)
    to_nnunet_images(read_dataset(test), work / "test_images")
    install_trainer(python)
    command = ["nnUNetv2_plan_and_preprocess", "-d", str(DATASET_ID), "-c", "3d_fullres", "--verify_dataset_integrity",
               "-npfp", str(os.cpu_count()), "-np", str(os.cpu_count()), "--no_pbar"]
    seconds = run_nnunet(python, command, nnunet_environment(work), work / "log.txt")
    plans = json.loads((work / "nnUNet_preprocessed" / f"Dataset{DATASET_ID:03d}_{DATASET_NAME}" / "nnUNetPlans.json").read_text())
    config = plans["configurations"]["3d_fullres"]
    return {"plan_and_preprocess_wall_seconds": seconds, "command": shlex.join(command), "patch_size_zyx": config["patch_size"],
            "batch_size": config["batch_size"], "spacing_zyx": config["spacing"], "network": config["architecture"]["network_class_name"]}


def run_nnunet_contender(python: Path, test: Path, work: Path, seed: int, seconds: float, threads: int) -> dict:
    """Train nnU-Net's budgeted trainer once (``seed`` names a repeat: nnU-Net takes no seed), predict the held-out
    cases; return its record and scores."""
    results = work / f"nnUNet_results_seed{seed}"
    record = work / f"record_seed{seed}.json"
    env = nnunet_environment(work, nnUNet_results=str(results), nnUNet_n_proc_DA="0", **budget_environment(seconds, record, threads))
    log = work / f"log_seed{seed}.txt"
    run_nnunet(python, ["nnUNetv2_train", str(DATASET_ID), "3d_fullres", "0", "-tr", TRAINER, "-device", "cpu"], env, log)
    predictions = work / f"predictions_seed{seed}"
    inference = run_nnunet(python, ["nnUNetv2_predict", "-i", str(work / "test_images"), "-o", str(predictions), "-d", str(DATASET_ID),
                                    "-c", "3d_fullres", "-f", "0", "-tr", TRAINER, "-device", "cpu", "--disable_progress_bar"], env, log)
    return {**json.loads(record.read_text()), "inference_wall_seconds": inference, "scores": class_scores(predictions, test)}


def spread(values: Sequence[float]) -> tuple[float, float, float]:
    """Return (mean, lowest, highest) of the finite ``values``; NaN for each without any."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return math.nan, math.nan, math.nan
    return sum(finite) / len(finite), min(finite), max(finite)


def per_class(runs: Sequence[Mapping], metric: str) -> dict[str, tuple[float, float, float]]:
    """Return each class's (mean, lowest, highest) of ``metric`` over the runs (one run a seed)."""
    classes = list(runs[0]["scores"])
    return {c: spread([run["scores"][c][metric] for run in runs]) for c in classes}


def mean_dice(run: Mapping) -> float:
    """Return a run's Dice averaged over the classes (those defined)."""
    return spread([s["dice"] for s in run["scores"].values()])[0]


def _text(values: tuple[float, float, float], digits: int) -> str:
    mean, low, high = values
    if not math.isfinite(mean):
        return "n/a"
    return f"{mean:.{digits}f}" + (f" ({low:.{digits}f}-{high:.{digits}f})" if high > low else "")


def summary_rows(contenders: Mapping[str, Mapping]) -> list[dict]:
    """Return one table row per contender: Dice and HD95 per class and mean Dice (mean over seeds, lowest-highest in
    brackets), seeds, CPU seconds and steps; a contender that did not run says why in its first column."""
    classes = next((list(c["runs"][0]["scores"]) for c in contenders.values() if c.get("runs")), [])
    rows = []
    for name, contender in contenders.items():
        runs = contender.get("runs") or []
        row = {"contender": name if runs else f"{name}: {contender['status']}"}
        dice, hd95 = (per_class(runs, "dice"), per_class(runs, "hd95_mm")) if runs else ({}, {})
        for c in classes:
            row[f"Dice {c}"] = _text(dice[c], 3) if runs else ""
        row["mean Dice"] = _text(spread([mean_dice(r) for r in runs]), 3) if runs else ""
        for c in classes:
            row[f"HD95 {c} mm"] = _text(hd95[c], 1) if runs else ""
        row["seeds"] = " ".join(str(r["seed"]) for r in runs)
        row["CPU s"] = " ".join(f"{r['cpu_seconds']:.0f}" for r in runs)
        row["steps"] = " ".join(str(r["steps"]) for r in runs)
        rows.append(row)
    return rows


def plot(contenders: Mapping[str, Mapping]):
    """Return a figure: one group of bars per class, one bar per contender that ran (mean Dice over the seeds, its mean
    steps in the legend), its error bar the lowest and highest seed."""
    from matplotlib.figure import Figure

    ran = {name: c["runs"] for name, c in contenders.items() if c.get("runs")}
    classes = list(next(iter(ran.values()))[0]["scores"]) if ran else []
    figure = Figure(figsize=(max(6, 1.8 * len(classes) + 2), 4), layout="constrained")
    axes = figure.subplots()
    width = 0.8 / max(len(ran), 1)
    for offset, (name, runs) in enumerate(ran.items()):
        values = per_class(runs, "dice")
        means = [values[c][0] for c in classes]
        errors = [[values[c][0] - values[c][1] for c in classes], [values[c][2] - values[c][0] for c in classes]]
        positions = [i + (offset - (len(ran) - 1) / 2) * width for i in range(len(classes))]
        steps = round(sum(run["steps"] for run in runs) / len(runs))
        bars = axes.bar(positions, means, width, yerr=errors, capsize=3, label=f"{name} ({len(runs)} seed{'s' * (len(runs) > 1)}, {steps} steps)")
        axes.bar_label(bars, fmt="%.3f", fontsize=8)
    axes.set_xticks(range(len(classes)), classes)
    axes.set(ylabel="Dice on held-out cases", ylim=(0, 1.05))
    figure.legend(loc="outside upper center")
    return figure


def markdown(report: Mapping) -> str:
    """Return the settings, the table and what it does not show."""
    s, nnunet = report["settings"], report.get("nnunet_preparation")
    lines = [
        f"{s['train_cases']} training cases (data seed {s['data_seed']}; each contender trains on fold 0 of 5) and "
        f"{s['test_cases']} held-out cases (data seed {s['data_seed'] + 1}) of the fine-structures phantoms "
        f"({'x'.join(map(str, s['shape']))} voxels at 0.8 x 0.8 x 2.5 mm); {s['cpu_seconds']:g} CPU seconds of training per "
        f"contender and seed (process CPU time after set-up, checked before each step), seeds {' '.join(map(str, s['seeds']))}; "
        f"load average (1, 5, 15 min) before and after: {report['load_average_before_after']}; {report['seconds']:.0f} s in all.",
        "",
        "Per class: mean over the seeds of the mean over the held-out cases, lowest-highest seed in brackets; HD95 over the "
        "cases where it is defined. `CPU s`: training CPU seconds each seed spent; `steps`: its optimizer steps.",
        "",
        markdown_rows(summary_rows(report["contenders"])),
        "",
        "; ".join(f"{name}: {c['runs'][0]['network']}, torch {c['runs'][0]['torch']}, {c['runs'][0]['threads']} thread(s), "
                  f"{' '.join(str(round(r['wall_seconds'])) for r in c['runs'])} s of wall time for its CPU seconds"
                  for name, c in report["contenders"].items() if c.get("runs")) + ".",
    ]
    if nnunet:
        lines += ["", f"nnU-Net v2 {report['nnunetv2']}: `{nnunet['command']}` took {nnunet['plan_and_preprocess_wall_seconds']:.0f} s "
                      f"(wall); its 3d_fullres plan: {nnunet['network']}, patch (z, y, x) {nnunet['patch_size_zyx']}, batch {nnunet['batch_size']}."]
    failures = [f"- {name}: {c['status']}" for name, c in report["contenders"].items() if c["status"].startswith("failed")]
    return "\n".join(lines + (["", "Failures:", *failures] if failures else []))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nnunet-python", type=Path, default=None, help="python of an environment with nnunetv2 (without it: no nnU-Net row)")
    parser.add_argument("--cpu-seconds", type=float, default=1500.0, help="training CPU seconds per contender and seed")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--train", type=int, default=20, help="training cases")
    parser.add_argument("--test", type=int, default=10, help="held-out cases")
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--shape", type=int, nargs=3, default=[96, 96, 32], help="voxels per case (x y z; the phantoms default to 160 160 48)")
    parser.add_argument("--jobs", type=int, default=1, help="trainings at a time, each with an equal share of the cores")
    parser.add_argument("--work", type=Path, default=None, help="folder for data, runs, logs and predictions, kept (default: a new temporary one)")
    add_output_option(parser, required=True)  # and OUTPUT.png
    args = parser.parse_args()

    from medseg.data.demo import fine_structures, generate_demo_dataset

    work = args.work or Path(tempfile.mkdtemp(prefix="medseg-nnunet-comparison-"))
    load_before, started = os.getloadavg(), time.perf_counter()
    phantoms = fine_structures(tuple(args.shape))
    train = generate_demo_dataset(work / "train", args.train, args.data_seed, phantoms)
    test = generate_demo_dataset(work / "test", args.test, args.data_seed + 1, phantoms)
    contenders = {
        TUTORIAL: {"options": ["--network", "tutorial"], "folder": "medseg_tutorial_unet"},
        NNUNET_CLASS: {"options": ["--network", "plain"], "folder": "medseg_nnunet_class"},
        NNUNET: {} if args.nnunet_python else {"status": "not run (no --nnunet-python)"},
    }
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    report: dict = {"nnunetv2": nnunet_version(args.nnunet_python) if args.nnunet_python else None}
    if args.nnunet_python:
        try:
            report["nnunet_preparation"] = prepare_nnunet(args.nnunet_python, train, test, work / "nnunet")
        except subprocess.CalledProcessError as err:
            contenders[NNUNET] = {"status": f"failed: {Path(err.cmd[0]).name} (exit {err.returncode}), see {work / 'nnunet' / 'log.txt'}"}

    def train_and_score(name: str, seed: int) -> dict:
        if name == NNUNET:
            return run_nnunet_contender(args.nnunet_python, test, work / "nnunet", seed, args.cpu_seconds, threads)
        contender = contenders[name]
        return run_medseg(train, test, work / contender["folder"] / f"seed{seed}", seed, args.cpu_seconds, threads, contender["options"])

    jobs = [(name, seed) for seed in args.seeds for name, contender in contenders.items() if "status" not in contender]
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        running = {pool.submit(train_and_score, name, seed): (name, seed) for name, seed in jobs}
        for future in concurrent.futures.as_completed(running):
            name, seed = running[future]
            contender = contenders[name]
            try:
                run = future.result()
            except subprocess.CalledProcessError as err:
                contender["status"] = f"failed: {Path(err.cmd[0]).name} {' '.join(map(str, err.cmd[1:3]))} (exit {err.returncode}), logs in {work}"
                continue
            contender.setdefault("runs", []).append({"seed": seed, **run})
            print(f"{name}, seed {seed}: {json.dumps(run['scores'])}", flush=True)
    for contender in contenders.values():
        contender.setdefault("status", "ran")
        contender["runs"] = sorted(contender.get("runs", []), key=lambda run: run["seed"])
    report |= {
        "settings": {"cpu_seconds": args.cpu_seconds, "seeds": args.seeds, "train_cases": args.train, "test_cases": args.test,
                     "data_seed": args.data_seed, "shape": args.shape, "jobs": args.jobs, "threads_per_training": threads,
                     "medseg_training_command": shlex.join(["python", *medseg_training_command(Path("TRAIN"), Path("CACHE"), Path("OUT"), 0, [])[1:]])},
        "load_average_before_after": [round(v, 2) for v in (*load_before, *os.getloadavg())],
        "seconds": time.perf_counter() - started,
        "contenders": contenders,
    }
    text = markdown(report)
    write_results(args.output, "medseg against nnU-Net v2 at equal CPU time: fine-structures phantoms", report, text)
    plot(contenders).savefig(f"{args.output}.png", dpi=120)
    print(text)


if __name__ == "__main__":
    main()
