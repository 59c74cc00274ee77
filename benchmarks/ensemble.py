"""Cross-validation, fold ensemble and postprocessing on the demo data (issue 21's measurement).

Trains every fold of ``--config`` with ``medseg.train --data.fold all``, then segments unseen demo cases (the demo
generator with another seed) three ways: the best single fold (highest mean validation Dice), the ensemble of all
folds, and the ensemble with the postprocessing chosen on the pooled validation predictions; Dice and HD95 per class
for each (``medseg.evaluate``). Also times the window stage of one scan with 1 model against all of them, and each
whole run. Any other option is passed to training:

    python -m benchmarks.ensemble --config configs/demo.yaml --folds 5 --output benchmarks/results/ensemble/ensemble_cpu_demo
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import add_output_option, markdown_rows, write_results
from medseg.data.demo import generate_demo_dataset
from medseg.data.formats import find_scans
from medseg.evaluation import evaluate
from medseg.inference import InferenceOptions, Predictor, segment_scans
from medseg.inference.checkpoint import load_ensemble
from medseg.viz import plot_score_comparison


def best_fold_checkpoint(folder: Path) -> tuple[int, Path]:
    """Return the fold with the highest mean validation Dice in the cross-validation summary, and its best checkpoint."""
    summary = json.loads((folder / "summary.json").read_text())
    fold = max(summary["folds"], key=lambda f: f["dice"]["mean"])["fold"]
    [best] = sorted((folder / f"fold_{fold}").glob("version_*/checkpoints/best-*.ckpt"))[-1:]
    return fold, best


def scores(predictions: Path, truth: Path) -> dict[str, dict[str, float]]:
    """Return mean Dice and HD95 per class (over the cases where each is defined)."""
    result = evaluate(predictions, truth)
    means = {metric: result.class_means(metric) for metric in ("dice", "hd95_mm")}
    return {name: {metric: means[metric][name] for metric in means} for name in result.class_names}


def window_seconds(models: list, scan, repeats: int) -> float:
    """Return the fastest of ``repeats`` window stages (sliding windows and blending) on one preprocessed scan."""
    predictor = Predictor(models, InferenceOptions(device="cpu"))
    image = predictor.read(scan).data["image"].as_tensor()[None]
    times = []
    for _ in range(repeats + 1):  # one warm-up
        start = time.perf_counter()
        predictor.probabilities(image)
        times.append(time.perf_counter() - start)
    return min(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--unseen", type=int, default=8, help="unseen demo cases to segment")
    parser.add_argument("--repeats", type=int, default=3, help="timed window stages per model count")
    parser.add_argument("--work", type=Path, default=None, help="folder for runs and predictions (default: a temporary one)")
    add_output_option(parser, required=True)  # and OUTPUT.png: Dice per class
    args, training = parser.parse_known_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="medseg-ensemble-"))
    runs = work / "runs"
    command = [sys.executable, "-m", "medseg.train", "--config", args.config, f"--data.num_folds={args.folds}", "--data.fold=all",
               f"--trainer.default_root_dir={runs}", f"--trainer.logger.init_args.save_dir={runs}", *training]
    start = time.perf_counter()
    subprocess.run(command, check=True)
    training_seconds = time.perf_counter() - start
    folder = runs / "medseg_cv"
    unseen = generate_demo_dataset(work / "unseen", num_cases=args.unseen, seed=1)
    fold, best = best_fold_checkpoint(folder)

    ways = {"best single fold": ([best], False), f"{args.folds}-fold ensemble": ([folder], False), f"{args.folds}-fold ensemble + postprocessing": ([folder], True)}
    results, seconds = {}, {}
    for name, (checkpoints, postprocessing) in ways.items():
        output = work / name.replace(" ", "_").replace("+", "and")
        start = time.perf_counter()
        summary = segment_scans(checkpoints, unseen, output, InferenceOptions(device="cpu"), overwrite=True, postprocessing=postprocessing)
        seconds[name] = time.perf_counter() - start
        assert not summary.failed, summary.lines()
        results[name] = scores(output, unseen)

    scan = find_scans(unseen)[0]
    members = load_ensemble([folder])
    window = {"1 model": window_seconds(members[:1], scan, args.repeats), f"{len(members)} models": window_seconds(members, scan, args.repeats)}
    cv = json.loads((folder / "summary.json").read_text())
    record = {
        "cpu_threads": torch.get_num_threads(),
        "training_seconds": training_seconds,
        "cross_validation": cv,
        "best_fold": fold,
        "unseen_cases": args.unseen,
        "scores": results,
        "run_seconds": seconds,
        "window_seconds": window,
        "window_ratio": window[f"{len(members)} models"] / window["1 model"],
        "postprocessing": json.loads((folder / "postprocessing.json").read_text()),
    }
    rows = [
        {"": name, **{f"Dice {c}": f"{v['dice']:.4f}" for c, v in per_class.items()}, **{f"HD95 {c} (mm)": f"{v['hd95_mm']:.2f}" for c, v in per_class.items()},
         "run (s)": f"{seconds[name]:.1f}"}
        for name, per_class in results.items()
    ]
    lines = [
        f"{record['cpu_threads']} CPU threads; {args.folds} folds trained in {training_seconds:.0f} s;"
        f" {args.unseen} unseen cases (demo seed 1); best single fold: {fold}.", "",
        markdown_rows(rows), "",
        f"Window stage of one scan: {window['1 model']:.2f} s with 1 model, {window[f'{len(members)} models']:.2f} s with {len(members)}"
        f" ({record['window_ratio']:.2f}x).", "",
        f"Postprocessing chosen on the pooled validation: {record['postprocessing']}",
    ]
    write_results(args.output, "Fold ensemble and postprocessing on unseen demo cases", record, "\n".join(lines))
    dice = {name: {c: v["dice"] for c, v in per_class.items()} for name, per_class in results.items()}
    plot_score_comparison(dice, "Dice").savefig(f"{args.output}.png", dpi=120)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
