"""Seeded k-fold split of a dataset's cases into training and validation."""

from __future__ import annotations

import numpy as np

from medseg.data.formats import Case
from medseg.errors import MedsegError


def split_cases(cases: tuple[Case, ...], num_folds: int, fold: int, seed: int) -> tuple[list[Case], list[Case]]:
    """Return (train, validation): the cases shuffled with `seed`, cut into `num_folds`, fold `fold` held out."""
    if num_folds < 2 or not 0 <= fold < num_folds:
        raise MedsegError(f"need num_folds >= 2 and 0 <= fold < num_folds, got num_folds={num_folds}, fold={fold}")
    if len(cases) < num_folds:
        raise MedsegError(f"{len(cases)} case(s) cannot be split into {num_folds} folds")
    order = np.random.default_rng(seed).permutation(len(cases))
    held_out = set(np.array_split(order, num_folds)[fold].tolist())
    return [c for i, c in enumerate(cases) if i not in held_out], [c for i, c in enumerate(cases) if i in held_out]
