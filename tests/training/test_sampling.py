import torch

from medseg.training.datamodule import SegmentationDataModule
from medseg.data.sampling import EpochSampler


def test_sampler_depends_only_on_seed_and_epoch():
    first, again = EpochSampler(10, 6, seed=1), EpochSampler(10, 6, seed=1)
    again.set_epoch(3)
    again.set_epoch(0)
    assert list(first) == list(again) and len(first) == 6
    first.set_epoch(1)
    assert [key[2] for key in first] != [key[2] for key in again]
    assert all(key[0] == 1 for key in first)


def test_one_pass_per_epoch_without_iterations():
    sampler = EpochSampler(5, None, seed=0)
    assert sorted(index for _, _, index in sampler) == [0, 1, 2, 3, 4]


def _epoch_batches(root, num_workers, epoch):
    dm = SegmentationDataModule(str(root), batch_size=2, patch_size=(24, 24, 12), num_folds=3, iterations_per_epoch=2, num_workers=num_workers)
    dm.setup("fit")
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(epoch)
    return [batch["image"] for batch in loader]


def test_epoch_patches_are_identical_with_or_without_workers_and_differ_between_epochs(demo_root):
    torch.manual_seed(0)
    in_process = _epoch_batches(demo_root, num_workers=0, epoch=2)
    torch.manual_seed(0)
    with_workers = _epoch_batches(demo_root, num_workers=2, epoch=2)
    for a, b in zip(in_process, with_workers, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.manual_seed(0)
    assert not torch.equal(in_process[0], _epoch_batches(demo_root, num_workers=0, epoch=3)[0])
