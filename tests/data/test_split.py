"""Cross-validation folds: seeded, disjoint, covering every case once; written once as nnU-Net's splits_final.json and
read back, so that adding cases moves no case between folds; a user's split file used as given, a bad one refused."""

import json
import logging

import pytest

from medseg.data.formats import Case, read_dataset
from medseg.data.split import SPLIT_FILE, dataset_folds, fold_cases, root_split_file, split_cases, split_file_for
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


def _cases(*names: str) -> tuple[Case, ...]:
    return tuple(Case(name, ()) for name in names)


SIX = _cases(*(f"case_{i}" for i in range(6)))


def test_the_seeded_split_is_written_in_nnunets_format_and_read_back(tmp_path):
    split_file = tmp_path / "runs" / SPLIT_FILE
    made = dataset_folds(SIX, 3, 5, split_file)
    written = json.loads(split_file.read_text())
    assert written == [{"train": [c.name for c in train], "val": [c.name for c in val]} for train, val in made]
    assert sorted(name for fold in written for name in fold["val"]) == [c.name for c in SIX]
    assert [val for _, val in made] == [split_cases(SIX, 3, fold, 5)[1] for fold in range(3)]
    assert dataset_folds(SIX, 3, 6, split_file) == made  # read back: the seed made it once, and is not used again


def test_adding_a_case_changes_no_fold_of_a_written_split_and_warns_that_it_is_unused(tmp_path, caplog):
    split_file = tmp_path / SPLIT_FILE
    before = [fold_cases(SIX, 3, fold, 0, split_file) for fold in range(3)]
    caplog.set_level(logging.WARNING)
    after = [fold_cases((*SIX, *_cases("case_new")), 3, fold, 0, split_file) for fold in range(3)]
    assert after == before
    assert f"{split_file}: fold 2 neither trains nor validates on 1 case(s) of the dataset: case_new" in caplog.text


def test_the_dataset_roots_split_file_is_the_one_used_else_one_per_dataset_fold_count_and_seed_in_the_cache(tmp_path):
    root, other, cache = tmp_path / "Dataset001", tmp_path / "Dataset002", tmp_path / "cache"
    for folder in (root, other):
        folder.mkdir()
        (folder / "dataset.json").write_text("{}")
    own = split_file_for(root, cache, 5, 0)
    assert own.name == SPLIT_FILE and own.is_relative_to(cache) and own == split_file_for(root / "dataset.json", cache, 5, 0)
    # another dataset, fold count or seed is another split: none reads a file made for something else
    assert len({own, split_file_for(other, cache, 5, 0), split_file_for(root, cache, 3, 0), split_file_for(root, cache, 5, 1)}) == 4
    (root / SPLIT_FILE).write_text("[]")
    assert split_file_for(root, cache, 5, 0) == split_file_for(root / "dataset.json", cache, 3, 1) == root_split_file(root) == root / SPLIT_FILE
    assert root_split_file(other) is None and root_split_file(None) is None


@pytest.mark.parametrize(
    "folds, fold, message",
    [
        ([{"train": ["case_0"], "val": ["case_9"]}, {"train": ["case_9"], "val": ["case_0"]}], 0, "{f} names 1 case(s) the dataset does not have: case_9"),
        ([{"train": ["case_1"], "val": ["case_0"]}, {"train": ["case_1"], "val": ["case_0"]}], 0, "{f}: case case_0 is in the val of folds 0 and 1 (a case validates in one fold only)"),
        ([{"train": ["case_1"], "val": ["case_0"]}, {"train": ["case_0"], "val": ["case_1"]}], 2, "{f} has 2 folds (0 to 1): --data.fold 2 is not one of them"),
        ([{"train": [], "val": ["case_0"]}, {"train": ["case_0"], "val": []}], 0, "{f}: fold 0 has no training cases"),
        ([{"train": ["case_1"], "val": ["case_0"]}], 0, "{f} has 1 folds but --data.num_folds is 2: set --data.num_folds 1 to use it, or move it away to split again"),
        ({"train": ["case_1"]}, 0, '{f}: not a split file (nnU-Net\'s splits_final.json: a list of {{"train": [case names], "val": [case names]}}, one per fold)'),
    ],
    ids=["unknown-case", "validated-twice", "fold-beyond-the-file", "fold-without-training", "other-fold-count", "not-a-list"],
)
def test_a_bad_split_file_is_one_line_naming_it(tmp_path, folds, fold, message):
    split_file = tmp_path / SPLIT_FILE
    split_file.write_text(json.dumps(folds))
    with pytest.raises(MedsegError) as raised:
        fold_cases(SIX, 2, fold, 0, split_file)
    assert str(raised.value) == message.format(f=split_file)
