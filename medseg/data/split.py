"""The cross-validation split: nnU-Net's ``splits_final.json`` when there is one, else seeded k folds, written once and
read back, so that folds never change under a user's feet (adding cases to the dataset reshuffles nothing).

A split file is nnU-Net's format: a list with one entry per fold, each ``{"train": [case names], "val": [case names]}``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from medseg.atomic import write_text_atomic
from medseg.data.fingerprint import dataset_cache_name
from medseg.data.formats import Case
from medseg.errors import MedsegError

__all__ = ["SPLIT_FILE", "RUN_SPLIT_FILE", "split_cases", "root_split_file", "split_file_for", "read_split_file", "dataset_folds", "fold_cases", "record_split"]

SPLIT_FILE = "splits_final.json"  # nnU-Net's name: in a dataset root it is the user's split, and medseg only reads it
RUN_SPLIT_FILE = "split.json"  # in each run folder: the fold it trained on

log = logging.getLogger(__name__)

Fold = tuple[list[Case], list[Case]]  # (train, validation)


def split_cases(cases: tuple[Case, ...], num_folds: int, fold: int, seed: int) -> Fold:
    """Return (train, validation): the cases shuffled with `seed`, cut into `num_folds`, fold `fold` held out."""
    if num_folds < 2 or not 0 <= fold < num_folds:
        raise MedsegError(f"need num_folds >= 2 and 0 <= fold < num_folds, got num_folds={num_folds}, fold={fold}")
    if len(cases) < num_folds:
        raise MedsegError(f"{len(cases)} case(s) cannot be split into {num_folds} folds")
    order = np.random.default_rng(seed).permutation(len(cases))
    held_out = set(np.array_split(order, num_folds)[fold].tolist())
    return [c for i, c in enumerate(cases) if i not in held_out], [c for i, c in enumerate(cases) if i in held_out]


def root_split_file(root: str | Path | None) -> Path | None:
    """Return the dataset root's ``splits_final.json`` when it has one (a user's or nnU-Net's), else None."""
    if root is None:
        return None
    root = Path(root)
    in_root = (root.parent if root.is_file() else root) / SPLIT_FILE  # a root may be given as its dataset.json
    return in_root if in_root.is_file() else None


def split_file_for(root: str | Path, cache_dir: str | Path, num_folds: int, seed: int) -> Path:
    """Return the split file a run uses: the dataset root's (``root_split_file``), else medseg's own for this dataset,
    fold count and seed, in the cache folder (nnU-Net keeps its own beside the preprocessed dataset), which the first
    run writes and later runs read back."""
    in_root = root_split_file(root)
    if in_root is not None:
        return in_root
    return Path(cache_dir) / "splits" / dataset_cache_name(root) / f"{num_folds}folds-seed{seed}" / SPLIT_FILE


def _names(cases: list[Case]) -> list[str]:
    return [case.name for case in cases]


def read_split_file(path: Path) -> list[dict[str, list[str]]]:
    """Return the folds of a split file as written, refusing one that is not nnU-Net's format."""
    try:
        folds = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise MedsegError(f"{path}: cannot read the split file ({err})") from None
    well_formed = isinstance(folds, list) and folds and all(
        isinstance(fold, dict) and all(isinstance(fold.get(key), list) and all(isinstance(name, str) for name in fold[key]) for key in ("train", "val"))
        for fold in folds
    )
    if not well_formed:
        raise MedsegError(f'{path}: not a split file (nnU-Net\'s splits_final.json: a list of {{"train": [case names], "val": [case names]}}, one per fold)')
    return folds


def _check(path: Path, folds: list[dict[str, list[str]]], cases: tuple[Case, ...], num_folds: int) -> None:
    """Refuse a split file that names cases the dataset lacks, validates a case in two folds, leaves a fold without
    training cases, or has another number of folds than ``num_folds``; each is one line naming the file."""
    known = {case.name for case in cases}
    unknown = sorted({name for fold in folds for name in fold["train"] + fold["val"]} - known)
    if unknown:
        raise MedsegError(f"{path} names {len(unknown)} case(s) the dataset does not have: {', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}")
    validated_in: dict[str, int] = {}
    for index, fold in enumerate(folds):
        for name in fold["val"]:
            if validated_in.setdefault(name, index) != index:
                raise MedsegError(f"{path}: case {name} is in the val of folds {validated_in[name]} and {index} (a case validates in one fold only)")
        if not fold["train"]:
            raise MedsegError(f"{path}: fold {index} has no training cases")
    if len(folds) != num_folds:
        raise MedsegError(
            f"{path} has {len(folds)} folds but --data.num_folds is {num_folds}: set --data.num_folds {len(folds)} to use it, or move it away to split again"
        )


def dataset_folds(cases: tuple[Case, ...], num_folds: int, seed: int, split_file: Path | None) -> list[Fold]:
    """Return every fold's (train, validation) cases, in the dataset's order.

    From ``split_file`` when it exists (checked: ``_check``); else made from ``seed`` (``split_cases``) and, when
    ``split_file`` is given, written there atomically for later runs to read back.
    """
    if split_file is not None and split_file.is_file():
        folds = read_split_file(split_file)
        _check(split_file, folds, cases, num_folds)
        log.info(f"cross-validation split read from {split_file} ({len(folds)} folds)")
        chosen = [(set(fold["train"]), set(fold["val"])) for fold in folds]
        return [([c for c in cases if c.name in train], [c for c in cases if c.name in val]) for train, val in chosen]
    made = [split_cases(cases, num_folds, fold, seed) for fold in range(num_folds)]
    if split_file is not None:
        write_text_atomic(split_file, json.dumps([{"train": _names(train), "val": _names(val)} for train, val in made], indent=2))
        log.info(f"cross-validation split ({num_folds} folds, split_seed {seed}) written to {split_file}; later runs read it back")
    return made


def fold_cases(cases: tuple[Case, ...], num_folds: int, fold: int, seed: int, split_file: Path | None) -> Fold:
    """Return fold ``fold``'s (train, validation) cases (``dataset_folds``).

    As in nnU-Net, dataset cases that a split file leaves out of the fold are not used by it: a warning names them
    (cases added to the dataset after the split was made do not reshuffle its folds). A case in both the fold's train
    and val is a warning too, as in nnU-Net (its ``fold all`` trains and validates on every case on purpose).
    """
    folds = dataset_folds(cases, num_folds, seed, split_file)
    if not 0 <= fold < len(folds):
        source = split_file if split_file is not None else f"the seeded split (--data.num_folds {num_folds})"
        raise MedsegError(f"{source} has {len(folds)} folds (0 to {len(folds) - 1}): --data.fold {fold} is not one of them")
    train, val = folds[fold]
    unused = sorted({case.name for case in cases} - set(_names(train)) - set(_names(val)))
    if unused:
        log.warning(f"{split_file}: fold {fold} neither trains nor validates on {len(unused)} case(s) of the dataset: "
                    f"{', '.join(unused[:5])}{' ...' if len(unused) > 5 else ''} (add them to the file to use them)")
    both = sorted(set(_names(train)) & set(_names(val)))
    if both:
        log.warning(f"{split_file}: fold {fold} trains and validates on {len(both)} case(s): {', '.join(both[:5])}")
    return train, val


def record_split(run_folder: Path, split_file: Path | None, fold: int, train: list[Case], val: list[Case]) -> None:
    """Write the fold a run trains on into its run folder (``split.json``): the split file it came from, train and val."""
    record = {"split_file": str(split_file) if split_file else None, "fold": fold, "train": _names(train), "val": _names(val)}
    write_text_atomic(run_folder / RUN_SPLIT_FILE, json.dumps(record, indent=2))
