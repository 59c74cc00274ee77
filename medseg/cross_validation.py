"""``python -m medseg.train --data.fold all``: train every fold, predict each fold's validation cases on their own
grids, summarise the cross-validation, and choose postprocessing on the pooled predictions (nnU-Net's workflow).

Layout of the cross-validation folder (``<logger save_dir>/<logger name>_cv``)::

    fold_K/version_0/...        each fold's training run (checkpoints, config.yaml, metrics.csv)
    fold_K/validation/          its validation cases' label maps on the scans' grids, evaluation.csv (per-case Dice)
    summary.json                Dice per class per fold, the mean over folds and the pooled result
    postprocessing.json         chosen on the pooled validation predictions (python -m medseg.postprocess's rule)

``python -m medseg.infer --checkpoint <that folder>`` then ensembles the folds and applies the postprocessing.
Each fold trains in a process of its own, exactly as ``--data.fold K`` would (on several GPUs, with DDP); a fold
whose validation is written is done, so rerunning an interrupted command resumes where it stopped.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np

from medseg.atomic import write_text_atomic
from medseg.data.split import split_cases
from medseg.errors import MedsegError
from medseg.evaluate import Evaluation, dice_per_class, read_label_pair, score_case
from medseg.inference import InferenceOptions, segment_scans
from medseg.inference.postprocessing import POSTPROCESSING_FILE
from medseg.postprocess import choose_postprocessing
from medseg.tables import format_rows
from medseg.training.cli import build_cli

log = logging.getLogger("medseg.cross_validation")

ALL_FOLDS = "all"
VALIDATION_FOLDER = "validation"
EVALUATION_FILE = "evaluation.csv"
SUMMARY_FILE = "summary.json"


def asks_for_all_folds(args: list[str]) -> bool:
    """Return whether the command line says ``--data.fold all``."""
    return any(a == f"--data.fold={ALL_FOLDS}" for a in args) or any(
        a == "--data.fold" and b == ALL_FOLDS for a, b in zip(args, args[1:])
    )


def without_fold(args: list[str]) -> list[str]:
    """Return ``args`` without its ``--data.fold`` option."""
    kept, skip = [], False
    for index, arg in enumerate(args):
        if skip:
            skip = False
        elif arg == "--data.fold":
            skip = index + 1 < len(args)
        elif not arg.startswith("--data.fold="):
            kept.append(arg)
    return kept


def fold_arguments(args: list[str], folder: Path, fold: int) -> list[str]:
    """Return the command line that trains ``fold`` into ``folder/fold_K``, resuming it where it has a last.ckpt."""
    run = [*args, f"--data.fold={fold}", f"--trainer.logger.init_args.save_dir={folder}", f"--trainer.logger.init_args.name=fold_{fold}"]
    return run + ["--ckpt_path=last"] if list((folder / f"fold_{fold}").glob("version_*/checkpoints/last.ckpt")) else run


def fold_result(folder: Path, fold: int) -> Path | None:
    """Return the best checkpoint of a finished fold run (the last one when it never validated), else None."""
    runs = sorted((folder / f"fold_{fold}").glob("version_*/checkpoints"))
    if not runs:
        return None
    best = sorted(runs[-1].glob("best-*.ckpt"))
    return best[-1] if best else (runs[-1] / "last.ckpt" if (runs[-1] / "last.ckpt").is_file() else None)


def summary_table(summary: dict) -> str:
    """Return the cross-validation summary as a text table: a row per fold, the mean over folds, the pooled cases."""
    rows = [{"": f"fold {fold['fold']} ({fold['cases']} cases)", **fold["dice"]} for fold in summary["folds"]]
    rows += [{"": "mean over folds", **summary["mean_over_folds"]}, {"": f"pooled ({summary['pooled']['cases']} cases)", **summary["pooled"]["dice"]}]
    return format_rows([{key: f"{value:.4f}" if isinstance(value, float) else value for key, value in row.items()} for row in rows])


def _mean_dice(dice: list[tuple[float, ...]], class_names: list[str]) -> dict[str, float]:
    """Return each foreground class's Dice averaged over the cases where it is defined, and their mean."""
    with np.errstate(invalid="ignore"):
        means = {name: float(np.nanmean([case[index] for case in dice])) for index, name in enumerate(class_names[1:])}
    return {**means, "mean": float(np.mean(list(means.values())))}


def run_cross_validation(args: list[str]) -> dict:
    """Train every fold as ``args`` say (``--data.fold all`` removed), then write and return the summary."""
    args = without_fold(args)
    probe = build_cli([*args, "--data.fold=0"])  # the configuration as every fold reads it, checked before any fold trains
    data, logger = probe.config["data"], probe.config["trainer"]["logger"]
    if not logger or "save_dir" not in logger.get("init_args", {}):
        raise MedsegError("--data.fold all needs a logger with save_dir and name (the default CSVLogger) to place the folds")
    folder = Path(logger["init_args"]["save_dir"]) / f"{logger['init_args'].get('name') or 'medseg'}_cv"
    cases, class_names = probe.datamodule.spec.cases, list(probe.datamodule.class_names)
    num_folds, split_seed = int(data["num_folds"]), int(data["split_seed"])
    del probe
    folds = []
    for fold in range(num_folds):
        validation = folder / f"fold_{fold}" / VALIDATION_FOLDER
        _, val_cases = split_cases(cases, num_folds, fold, split_seed)
        if (validation / EVALUATION_FILE).is_file():
            log.info(f"fold {fold}: done before ({validation}), not trained again")
        else:
            log.info(f"fold {fold} of {num_folds}: training into {folder / f'fold_{fold}'}")
            trained = subprocess.run([sys.executable, "-m", "medseg.train", *fold_arguments(args, folder, fold)])
            checkpoint = fold_result(folder, fold)
            if trained.returncode != 0 or checkpoint is None:
                raise MedsegError(
                    f"fold {fold} failed (exit code {trained.returncode}; its messages are above); the other folds' runs in {folder} "
                    "are kept: rerun the same command to resume"
                )
            summary = segment_scans(checkpoint, val_cases, validation, InferenceOptions(), overwrite=True, postprocessing=False)
            if summary.failed:
                raise MedsegError(f"fold {fold}: predicting its validation cases failed: {summary.failed[0][0]}: {summary.failed[0][1]}")
            scored = Evaluation([score_case(validation / f"{case.name}.nii.gz", case.label) for case in val_cases], class_names[1:])
            write_text_atomic(validation / EVALUATION_FILE, scored.csv_text())
        folds.append((fold, val_cases))
    return summarise(folder, folds, class_names)


def summarise(folder: Path, folds: list[tuple[int, list]], class_names: list[str]) -> dict:
    """Write summary.json and postprocessing.json for the finished ``folds`` under ``folder``, print the table, return the summary."""
    per_fold, pooled_dice, pooled_maps = [], [], []
    for fold, val_cases in folds:
        # each label map is read once: its Dice here, and the map itself for choosing postprocessing
        maps = [read_label_pair(folder / f"fold_{fold}" / VALIDATION_FOLDER / f"{case.name}.nii.gz", case.label)[:2] for case in val_cases]
        dice = [dice_per_class(pred, truth, len(class_names)) for pred, truth in maps]
        per_fold.append({"fold": fold, "cases": len(dice), "dice": _mean_dice(dice, class_names)})
        pooled_dice += dice
        pooled_maps += maps
    names = [*class_names[1:], "mean"]
    summary = {
        "folder": str(folder),
        "class_names": class_names,
        "folds": per_fold,
        "mean_over_folds": {name: float(np.mean([fold["dice"][name] for fold in per_fold])) for name in names},
        "pooled": {"cases": len(pooled_dice), "dice": _mean_dice(pooled_dice, class_names)},
    }
    write_text_atomic(folder / SUMMARY_FILE, json.dumps(summary, indent=2))
    chosen = choose_postprocessing(pooled_maps, class_names)
    write_text_atomic(folder / POSTPROCESSING_FILE, json.dumps(chosen.to_dict(), indent=2))
    print(f"\nCross-validation Dice ({len(per_fold)} folds):\n{summary_table(summary)}")
    print(f"{chosen.describe()} (chosen on the {len(pooled_maps)} pooled validation cases)")
    print(f"Summary: {folder / SUMMARY_FILE}; predict with the fold ensemble: python -m medseg.infer --checkpoint {folder} --input ... --output ...")
    return summary
