"""Cross-validation folds: seeded, disjoint, covering every case once."""

import pytest

from medseg.data.formats import read_dataset
from medseg.data.split import split_cases
from medseg.errors import MedsegError


def test_split_is_deterministic_disjoint_and_covers_all_folds(demo_root):
    cases = read_dataset(demo_root).cases
    held_out = []
    for fold in range(3):
        train, val = split_cases(cases, num_folds=3, fold=fold, seed=5)
        assert (train, val) == split_cases(cases, num_folds=3, fold=fold, seed=5)
        assert not set(train) & set(val) and len(train) + len(val) == len(cases)
        held_out += val
    assert sorted(c.name for c in held_out) == sorted(c.name for c in cases)
    assert split_cases(cases, 3, 0, seed=5)[1] != split_cases(cases, 3, 0, seed=6)[1]


def test_split_refuses_bad_fold(demo_root):
    with pytest.raises(MedsegError, match="0 <= fold < num_folds"):
        split_cases(read_dataset(demo_root).cases, num_folds=3, fold=3, seed=0)
