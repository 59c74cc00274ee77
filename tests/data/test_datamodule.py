import pytest
import torch

from medseg.data.datamodule import SegmentationDataModule, split_cases
from medseg.data.formats import read_dataset
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


def test_batches_have_patch_shape_and_batch_size_is_settable(demo_root):
    dm = SegmentationDataModule(str(demo_root), batch_size=2, patch_size=(32, 32, 16), num_folds=3, iterations_per_epoch=2, num_workers=0, cache="none")
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 1, 32, 32, 16) and batch["label"].shape == (2, 1, 32, 32, 16)
    assert batch["image"].dtype == torch.float32 and -0.5 < batch["image"].min() and batch["image"].max() < 1.5  # windowed, then augmented
    dm.batch_size = 3
    loader = dm.train_dataloader()
    assert next(iter(loader))["image"].shape[0] == 3 and len(loader) == 2
    volume = next(iter(dm.val_dataloader()))
    assert volume["image"].shape[0] == 1 and volume["image"].shape == volume["label"].shape


def test_dataset_facts_are_exposed_for_the_model(demo_root):
    dm = SegmentationDataModule(str(demo_root), num_folds=3, num_workers=0)
    assert (dm.in_channels, dm.num_classes) == (1, 3)
    assert dm.class_names == ["background", "organ", "lesion"] and dm.channel_names == ["CT"]
    assert dm.preprocessing.normalization == "ct"


def test_bad_values_are_named(demo_root):
    with pytest.raises(MedsegError, match="unknown cache 'ram'"):
        SegmentationDataModule(str(demo_root), cache="ram")
    with pytest.raises(MedsegError, match="batch_size must be at least 1"):
        SegmentationDataModule(str(demo_root), batch_size=0)
