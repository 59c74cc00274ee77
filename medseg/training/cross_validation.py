"""``python -m medseg.train --data.fold all``: train every fold, predict each fold's validation cases on their own
grids, summarise the cross-validation, and choose postprocessing on the pooled predictions (nnU-Net's workflow).

Layout of the cross-validation folder (``<logger save_dir>/<logger name>_cv``)::

    splits_final.json              the folds' split (nnU-Net's format): the dataset root's splits_final.json, else
                                   made from data.split_seed; written before the first fold, read back by every rerun
    fold_K/fold_options.json       the options the fold trains with (written before it starts)
    fold_K/version_0/...           its training run (checkpoints, config.yaml, metrics.csv)
    fold_K/version_0/validation/   its final validation: the validation cases' label maps on the scans' grids and
                                   evaluation.csv (per-case Dice), what the fold's run printed
    summary.json                   Dice per class per fold, the mean over folds and the pooled result
    postprocessing.json            chosen on the pooled validation predictions (python -m medseg.postprocess's rule)

``python -m medseg.infer --checkpoint <that folder>`` then ensembles the folds and applies the postprocessing.
Each fold trains in a process of its own, exactly as ``--data.fold K`` would (on several GPUs, with DDP); a fold
whose final validation is written is done, so rerunning an interrupted command resumes where it stopped. A fold
trained with other options is never reused silently: the rerun is refused, naming the options that differ, unless
``--retrain`` asks to train such folds again (their earlier runs are moved to ``<logger name>_cv_replaced/``).
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from medseg.atomic import write_text_atomic
from medseg.data.split import SPLIT_FILE, dataset_folds, read_split_file, root_split_file
from medseg.errors import MedsegError
from medseg.evaluation.metrics import dice_per_class, mean_over_cases, read_label_pair
from medseg.inference.postprocessing import POSTPROCESSING_FILE, choose_postprocessing
from medseg.inference.runner import flatten
from medseg.tables import format_rows
from medseg.training.cli import OLD_MODEL_KEYS, MedsegCLI, build_cli, parse_training_options, with_plan
from medseg.training.final_validation import EVALUATION_FILE, VALIDATION_FOLDER

log = logging.getLogger("medseg.cross_validation")

RETRAIN = "--retrain"
OPTIONS_FILE = "fold_options.json"
SUMMARY_FILE = "summary.json"
# Options that place a fold's run or pace it without changing what it learns: a rerun may change them and still resume.
# (data.split_file is always the cross-validation folder's splits_final.json, which a rerun reads back: ``keep_split``.)
PLACEMENT_OPTIONS = (
    "ckpt_path", "data.fold", "data.split_file", "data.cache", "data.cache_dir", "data.num_workers",
    "trainer.logger", "trainer.default_root_dir", "trainer.enable_progress_bar",
)


def fold_arguments(args: list[str], folder: Path, fold: int) -> list[str]:
    """Return the command line that trains ``fold`` into ``folder/fold_K``, resuming it where it has a last.ckpt."""
    run = [*args, f"--data.fold={fold}", f"--trainer.logger.init_args.save_dir={folder}", f"--trainer.logger.init_args.name=fold_{fold}"]
    return run + ["--ckpt_path=last"] if list((folder / f"fold_{fold}").glob("version_*/checkpoints/last.ckpt")) else run


def fold_validation(folder: Path, fold: int) -> Path | None:
    """Return the final validation folder of the fold's finished run (the newest, if it has several), else None."""
    done = sorted((folder / f"fold_{fold}").glob(f"version_*/{VALIDATION_FOLDER}/{EVALUATION_FILE}"), key=lambda path: path.stat().st_mtime)
    return done[-1].parent if done else None


def asked_options(cli: MedsegCLI, args: list[str]) -> dict:
    """Return the options ``args`` train with, every default filled in, as dotted names (``trainer.max_epochs``) and
    plain values, without those that only place or pace the run (``PLACEMENT_OPTIONS``). Read as asked, before this
    machine resolves them (``16-mixed`` stays that, whatever precision it runs at here)."""
    asked = flatten(json.loads(cli.parser.dump(cli.parser.parse_args(args), format="json")))
    return {name: value for name, value in asked.items() if not any(name == kept or name.startswith(f"{kept}.") for kept in PLACEMENT_OPTIONS)}


def changed_options(recorded: dict, options: dict) -> str:
    """Return the options whose values differ, as "name recorded -> now" joined by "; " ("" when none do)."""
    missing = "(unset)"
    changed = [name for name in sorted(recorded.keys() | options.keys()) if recorded.get(name, missing) != options.get(name, missing)]
    return "; ".join(f"{name} {json.dumps(recorded.get(name, missing))} -> {json.dumps(options.get(name, missing))}" for name in changed)


def folds_with_other_options(folder: Path, options: dict) -> dict[int, str]:
    """Return the folds under ``folder`` whose recorded options differ from ``options``, with how (``changed_options``);
    all of them, also those beyond this run's number of folds, which an ensemble of the folder would read as well."""
    differ = {}
    runs = {int(path.name.removeprefix("fold_")): path for path in folder.glob("fold_*") if path.name.removeprefix("fold_").isdigit()}
    for fold, run in sorted(runs.items()):
        record = run / OPTIONS_FILE
        if record.is_file():
            try:
                recorded = json.loads(record.read_text())
            except json.JSONDecodeError as err:
                raise MedsegError(f"{record}: not valid JSON ({err}); move {run} away to train the fold again") from None
            # a fold of the previous release recorded the model keys it still read (model.sw_overlap): under today's names
            recorded = {f"model.{OLD_MODEL_KEYS[name[6:]]}" if name[6:] in OLD_MODEL_KEYS and name.startswith("model.") else name: value
                        for name, value in recorded.items()}
            changed = changed_options(recorded, options)
            if changed:
                differ[fold] = changed
        else:
            log.warning(f"{run} has no record of its options (made by an older medseg): taken as made with these")
    return differ


def _folds(folds: list) -> str:
    """Return "fold 1" or "folds 0, 2"."""
    return f"fold{'s' if len(folds) > 1 else ''} {', '.join(map(str, folds))}"


def other_options_error(folder: Path, differ: dict[int, str]) -> MedsegError:
    """Return the one-line refusal to reuse folds trained with other options, naming them and the options."""
    by_change: dict[str, list[int]] = {}
    for fold, changed in differ.items():
        by_change.setdefault(changed, []).append(fold)
    how = "; ".join(f"{_folds(folds)}: {changed}" for changed, folds in by_change.items())
    return MedsegError(
        f"{folder} holds folds trained with other options ({how}): rerun with {RETRAIN} to train them again (their runs are moved "
        f"to {set_aside_folder(folder)}), or choose another --trainer.logger.init_args.name"
    )


def set_aside_folder(folder: Path) -> Path:
    """Return where ``--retrain`` moves the runs it replaces: beside the cross-validation folder, so no ensemble of it reads them."""
    return folder.with_name(f"{folder.name}_replaced")


def set_aside(folder: Path, folds: list[int]) -> Path:
    """Move the runs of ``folds``, and the summary and postprocessing made with them, out of ``folder``; return where to."""
    aside = set_aside_folder(folder) / time.strftime("%Y%m%d-%H%M%S")
    aside.mkdir(parents=True, exist_ok=True)
    for path in [*(folder / f"fold_{fold}" for fold in folds), folder / SUMMARY_FILE, folder / POSTPROCESSING_FILE]:
        if path.exists():
            path.rename(aside / path.name)
    return aside


def summary_table(summary: dict) -> str:
    """Return the cross-validation summary as a text table: a row per fold, the mean over folds, the pooled cases."""
    rows = [{"": f"fold {fold['fold']} ({fold['cases']} cases)", **fold["dice"]} for fold in summary["folds"]]
    rows += [{"": "mean over folds", **summary["mean_over_folds"]}, {"": f"pooled ({summary['pooled']['cases']} cases)", **summary["pooled"]["dice"]}]
    return format_rows([{key: f"{value:.4f}" if isinstance(value, float) else value for key, value in row.items()} for row in rows])


def _mean_dice(dice: list[tuple[float, ...]], class_names: list[str]) -> dict[str, float]:
    """Return each foreground class's Dice averaged over the cases where it is defined, and their mean."""
    means = dict(zip(class_names[1:], map(float, mean_over_cases(dice, len(class_names) - 1))))
    return {**means, "mean": float(np.mean(list(means.values())))}


def keep_split(folder: Path, source: Path | None) -> Path:
    """Return the cross-validation folder's split file, its folds' one split: when it has none yet, the split file
    given (``--data.split_file``, else the dataset root's splits_final.json) is copied there; else the seeded split is
    written there when the first fold starts. A given split that differs from the folder's is refused."""
    kept = folder / SPLIT_FILE
    if source is None:
        return kept
    if not source.is_file():
        raise MedsegError(f"{source}: split file not found")
    if not kept.is_file():
        write_text_atomic(kept, json.dumps(read_split_file(source), indent=2))
    elif read_split_file(kept) != read_split_file(source):
        raise MedsegError(f"{source} differs from {kept}, the split this folder's folds train with: move {folder} away to cross-validate with it")
    return kept


def run_cross_validation(args: list[str], retrain: bool = False, network: str | None = None, preset: str | None = None) -> dict:
    """Train every fold as the training options ``args`` say (each fold sets ``--data.fold``), then write and return
    the summary.

    A fold already trained with the same options is reused (resumed where it was interrupted); one trained with other
    options is refused, or with ``retrain`` (``--retrain``) moved aside and trained again. Every fold reads its split
    from the folder's splits_final.json (``keep_split``). ``network`` and ``preset`` choose the plan (``with_plan``)."""
    # the dataset's plan, when it trains with one, is read once here: every fold trains with the same
    args = with_plan(args, network, preset)
    asked = parse_training_options([*args, "--data.fold=0"])
    data, logger = asked["data"], asked["trainer"]["logger"]
    if not isinstance(logger, dict) or "save_dir" not in logger.get("init_args", {}):
        raise MedsegError("--data.fold all needs a logger with save_dir and name (the default CSVLogger) to place the folds")
    folder = Path(logger["init_args"]["save_dir"]) / f"{logger['init_args'].get('name') or 'medseg'}_cv"
    source = Path(data["split_file"]) if data["split_file"] else root_split_file(data["root"])
    args = [*args, f"--data.split_file={keep_split(folder, source)}"]
    probe_args = [*args, "--data.fold=0"]
    probe = build_cli(probe_args)  # the configuration as every fold reads it, checked before any fold trains (the split written)
    cases, class_names, split_file = probe.datamodule.spec.cases, list(probe.datamodule.class_names), probe.datamodule.split_file
    num_folds, split_seed = int(data["num_folds"]), int(data["split_seed"])
    options = asked_options(probe, probe_args)
    del probe
    differ = folds_with_other_options(folder, options)
    if differ and not retrain:
        raise other_options_error(folder, differ)
    if differ:
        log.info(f"{_folds(list(differ))} trained with other options: moved to {set_aside(folder, list(differ))}, to train again")
    folds = []
    for fold, (_, val_cases) in enumerate(dataset_folds(cases, num_folds, split_seed, split_file)):
        validation = fold_validation(folder, fold)
        if validation:
            log.info(f"fold {fold}: done before with these options ({validation}), not trained again")
        else:
            log.info(f"fold {fold} of {num_folds}: training into {folder / f'fold_{fold}'}")
            record = folder / f"fold_{fold}" / OPTIONS_FILE
            if not record.is_file():
                write_text_atomic(record, json.dumps(options, indent=2))
            trained = subprocess.run([sys.executable, "-m", "medseg.train", *fold_arguments(args, folder, fold)])
            validation = fold_validation(folder, fold)
            if trained.returncode != 0 or validation is None:
                raise MedsegError(
                    f"fold {fold} failed (exit code {trained.returncode}; its messages are above); the other folds' runs in {folder} "
                    "are kept: rerun the same command to resume"
                )
        folds.append((validation, val_cases))
    return summarise(folder, folds, class_names)


def summarise(folder: Path, folds: list[tuple[Path, list]], class_names: list[str]) -> dict:
    """Write summary.json and postprocessing.json for the finished ``folds`` (each its final validation folder and
    validation cases, in fold order) under ``folder``, print the table, return the summary."""
    per_fold, pooled_dice, pooled_maps = [], [], []
    for fold, (validation, val_cases) in enumerate(folds):
        # each label map is read once: its Dice here, and the map itself for choosing postprocessing
        maps = [read_label_pair(validation / f"{case.name}.nii.gz", case.label)[:2] for case in val_cases]
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
