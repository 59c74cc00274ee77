import os

import pytest
import torch
from lightning.pytorch.trainer.states import RunningStage

from medseg.training.datamodule import SegmentationDataModule, workers_for
from medseg.errors import MedsegError


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


def _multichannel_msd(root, num_cases=3):
    """MSD-style dataset whose images are 4D (x, y, z, channel) with two MRI channels."""
    import json

    import nibabel as nib
    import numpy as np

    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    training = []
    for i in range(num_cases):
        label = np.zeros((24, 24, 12), np.uint8)
        label[6:18, 6:18, 3:9] = 1
        image = np.stack([label * 50.0 + rng.normal(100, 5, label.shape), label * -30.0 + rng.normal(80, 5, label.shape)], axis=-1)
        nib.save(nib.Nifti1Image(image.astype(np.float32), np.diag([1.0, 1.0, 2.0, 1.0])), root / "imagesTr" / f"c{i}.nii.gz")
        nib.save(nib.Nifti1Image(label, np.diag([1.0, 1.0, 2.0, 1.0])), root / "labelsTr" / f"c{i}.nii.gz")
        training.append({"image": f"./imagesTr/c{i}.nii.gz", "label": f"./labelsTr/c{i}.nii.gz"})
    description = {"modality": {"0": "FLAIR", "1": "T1w"}, "labels": {"0": "background", "1": "tumour"}, "training": training}
    (root / "dataset.json").write_text(json.dumps(description))
    return root


def test_four_dimensional_msd_images_become_channels(tmp_path):
    root = _multichannel_msd(tmp_path)
    dm = SegmentationDataModule(str(root), patch_size=(16, 16, 8), spacing=None, num_folds=3, num_workers=0, cache="none")
    assert dm.in_channels == 2 and dm.preprocessing.normalization == "zscore"
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 2, 16, 16, 8) and batch["label"].shape == (2, 1, 16, 16, 8)
    volume = next(iter(dm.val_dataloader()))
    assert volume["image"].shape[1] == 2 and volume["image"].shape[2:] == volume["label"].shape[2:]


def test_validation_volumes_stay_on_the_cpu_while_training_batches_move_to_the_device(demo_root, make_trainer) -> None:
    data = SegmentationDataModule(str(demo_root), num_workers=0, check_dataset=False)
    trainer = make_trainer()
    data.trainer = trainer
    batch = {"image": torch.zeros(1, 1, 4, 4, 4)}
    for stage, device in [(RunningStage.TRAINING, "meta"), (RunningStage.SANITY_CHECKING, "cpu"), (RunningStage.VALIDATING, "cpu")]:
        trainer.state.stage = stage
        assert data.transfer_batch_to_device(batch, torch.device("meta"), 0)["image"].device.type == device


def test_training_batches_are_plain_tensors(demo_root):
    dm = SegmentationDataModule(str(demo_root), batch_size=2, patch_size=(32, 32, 16), num_folds=3, iterations_per_epoch=1, num_workers=0, cache="none")
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert type(batch["image"]) is torch.Tensor and type(batch["label"]) is torch.Tensor  # no MetaTensor work per step


def test_gpu_augmentation_needs_the_memory_cache(demo_root):
    with pytest.raises(MedsegError, match="augment_on_gpu caches volumes in GPU memory: it needs cache 'memory' or 'auto', not 'disk'"):
        SegmentationDataModule(str(demo_root), cache="disk", augment_on_gpu=True)


@pytest.mark.cuda
def test_gpu_augmentation_yields_patches_already_on_the_gpu(demo_root):
    import lightning as L

    dm = SegmentationDataModule(str(demo_root), batch_size=2, patch_size=(32, 32, 16), num_folds=3, iterations_per_epoch=1, num_workers=0, augment_on_gpu=True)
    dm.trainer = L.Trainer(accelerator="gpu", devices=1, logger=False)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].device.type == "cuda" and batch["image"].shape == (2, 1, 32, 32, 16)


@pytest.mark.parametrize("cache", ["memory", "auto"])
def test_drawing_patches_never_changes_the_cached_volumes(demo_root, tmp_path, cache):
    # the memory cache hands out its volumes without a copy: every augmentation must leave them as they were
    from monai.data import MetaTensor

    from medseg.data.transforms import Augmentation

    every_augmentation = Augmentation(flip_prob=1.0, rotate90_prob=1.0, rotate_prob=1.0, intensity_prob=1.0, noise_prob=1.0)
    dm = SegmentationDataModule(str(demo_root), batch_size=2, patch_size=(32, 32, 16), num_folds=3, iterations_per_epoch=8, num_workers=0,
                                augmentation=every_augmentation, cache=cache, cache_dir=str(tmp_path))
    dm.setup("fit")
    cache = dm.train_dataset.dataset._cache
    before = [{k: (v.clone(), len(getattr(v, "applied_operations", ()))) for k, v in item.items() if isinstance(v, torch.Tensor)} for item in cache]
    for _ in dm.train_dataloader():
        pass
    for item, kept in zip(cache, before):
        assert "image" in kept
        for key, (values, operations) in kept.items():
            now = item[key].as_tensor() if isinstance(item[key], MetaTensor) else item[key]
            assert torch.equal(now, values) and len(getattr(item[key], "applied_operations", ())) == operations


def test_disk_cache_of_other_preprocessing_is_never_read(demo_root, tmp_path):
    def first_validation_shape(spacing):
        dm = SegmentationDataModule(str(demo_root), patch_size=(32, 32, 16), spacing=spacing, num_folds=3, num_workers=0,
                                    cache="disk", cache_dir=str(tmp_path), check_dataset=False)
        dm.setup("fit")
        return tuple(dm.val_dataset[0]["image"].shape)

    coarse = first_validation_shape((1.5, 1.5, 3.0))
    fine = first_validation_shape((1.0, 1.0, 2.0))
    assert fine != coarse and first_validation_shape((1.5, 1.5, 3.0)) == coarse
    assert len(list((tmp_path / "preprocessed").rglob("*.pt"))) == 12  # every case (4 training, 2 validation) once per preprocessing


@pytest.mark.parametrize(
    ("device", "cores", "ranks", "workers"),
    [("cuda", 16, 1, 12), ("cuda", 64, 1, 12), ("cuda", 16, 4, 3), ("cuda", 1, 1, 0), ("cpu", 2, 1, 0), ("cpu", 16, 1, 7), ("cpu", 16, 2, 3)],
)
def test_auto_workers_give_a_gpu_all_cores_but_one_and_a_cpu_half_of_those_beyond_two(device, cores, ranks, workers):
    assert workers_for(device, cores, ranks) == workers


def test_auto_workers_are_chosen_when_the_data_is_set_up(demo_root, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(6)), raising=False)
    dm = SegmentationDataModule(str(demo_root), num_folds=3, cache="none", num_workers="auto")
    dm.setup("fit")
    assert dm.num_workers == 2  # 6 cores, no trainer: a CPU


def test_a_negative_number_of_workers_is_refused(demo_root):
    with pytest.raises(MedsegError, match="num_workers must be 'auto' or a number of processes"):
        SegmentationDataModule(str(demo_root), num_workers=-1)


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


@pytest.fixture
def spacing_calls(monkeypatch) -> list[int]:
    """Counts resamplings (one per case and preprocessing) since the fixture was set up."""
    from monai.transforms import Spacingd

    calls = []
    original = Spacingd.__call__

    def counting(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Spacingd, "__call__", counting)
    return calls


def _auto_data(root, cache_dir, **settings) -> SegmentationDataModule:
    dm = SegmentationDataModule(str(root), patch_size=(32, 32, 16), num_folds=3, num_workers=0, cache_dir=str(cache_dir), check_dataset=False, **settings)
    dm.setup("fit")
    return dm


def test_auto_cache_holds_a_small_dataset_in_memory_and_says_so(demo_root, tmp_path, caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="medseg.training.datamodule"):
        dm = _auto_data(demo_root, tmp_path)
    assert dm.storage.in_memory and dm.storage.on_disk and type(dm.train_dataset.dataset).__name__ == "CacheDataset"
    assert "data.cache auto: the preprocessed dataset takes up to" in caplog.text and "held in memory" in caplog.text


def test_auto_cache_reads_a_dataset_too_large_for_memory_from_disk(demo_root, tmp_path, monkeypatch):
    monkeypatch.setattr("medseg.training.datamodule.available_memory_bytes", lambda: 2**20)  # 1 MiB available
    dm = _auto_data(demo_root, tmp_path)
    assert dm.storage.on_disk and not dm.storage.in_memory
    assert not hasattr(dm.train_dataset.dataset, "_cache")  # nothing held: each patch reads its case from disk
    assert len(list((tmp_path / "preprocessed").rglob("*.pt"))) == 6  # every case preprocessed up front, once
    assert next(iter(dm.train_dataloader()))["image"].shape == (2, 1, 32, 32, 16)


def test_memory_cache_too_large_for_the_memory_available_is_refused_before_any_case_is_read(demo_root, tmp_path, monkeypatch, spacing_calls):
    monkeypatch.setattr("medseg.training.datamodule.available_memory_bytes", lambda: 2**20)
    with pytest.raises(MedsegError, match="^data.cache memory: the preprocessed dataset takes up to .* it does not fit: use --data.cache auto or disk$"):
        _auto_data(demo_root, tmp_path, cache="memory")
    assert spacing_calls == []


@pytest.mark.parametrize("available", [2**40, 2**20], ids=["in-memory", "from-disk"])
def test_a_second_start_preprocesses_nothing(demo_root, tmp_path, monkeypatch, spacing_calls, available):
    monkeypatch.setattr("medseg.training.datamodule.available_memory_bytes", lambda: available)
    _auto_data(demo_root, tmp_path)
    assert len(spacing_calls) == 6  # every case once: 4 training, 2 validation
    spacing_calls.clear()
    dm = _auto_data(demo_root, tmp_path)
    next(iter(dm.train_dataloader()))
    dm.val_dataset[0]
    assert spacing_calls == []


def test_a_case_whose_file_changed_is_preprocessed_again(demo_root, tmp_path, spacing_calls):
    import shutil

    root = shutil.copytree(demo_root, tmp_path / "data")
    _auto_data(root, tmp_path / "cache")
    spacing_calls.clear()
    scan = next((root / "imagesTr").glob("*.nii.gz"))
    os.utime(scan, ns=(scan.stat().st_atime_ns, scan.stat().st_mtime_ns + 10**9))
    _auto_data(root, tmp_path / "cache")
    assert len(spacing_calls) == 1


@pytest.mark.parametrize("available", [2**40, 2**20], ids=["in-memory", "from-disk"])
def test_batches_mix_cases_preprocessed_before_and_now(demo_root, tmp_path, monkeypatch, spacing_calls, available):
    # a case preprocessed now and one read back from the disk cache come in one batch: cases added to a dataset since
    # the last run, an interrupted first run, or another fold's cases
    monkeypatch.setattr("medseg.training.datamodule.available_memory_bytes", lambda: available)
    _auto_data(demo_root, tmp_path)
    for cached in sorted((tmp_path / "preprocessed").rglob("*.pt"))[::2]:
        cached.unlink()
    spacing_calls.clear()
    dm = _auto_data(demo_root, tmp_path, batch_size=8)
    assert len(spacing_calls) == 3
    batches = list(dm.train_dataloader())
    assert [batch["image"].shape for batch in batches] == [(8, 1, 32, 32, 16)] * len(batches)


@pytest.mark.parametrize("check_dataset", [True, False], ids=["checked", "unchecked"])
def test_each_image_is_checked_for_nan_voxels_once(demo_root, tmp_path, monkeypatch, check_dataset):
    from collections import Counter

    from medseg.io import nifti

    checked, check = Counter(), nifti.check_finite

    def counted(voxels, name):
        checked[str(name)] += 1
        check(voxels, name)

    monkeypatch.setattr(os, "cpu_count", lambda: 1)  # the dataset check in this process, where the count is
    monkeypatch.setattr("medseg.io.nifti.check_finite", counted)
    monkeypatch.setattr("medseg.data.transforms.check_finite", counted)
    dm = SegmentationDataModule(str(demo_root), patch_size=(32, 32, 16), num_folds=3, num_workers=0, cache="memory",
                                cache_dir=str(tmp_path), check_dataset=check_dataset)
    dm.setup("fit")
    images = [str(path) for case in dm.spec.cases for path in case.images]
    assert [checked[image] for image in images] == [1] * len(images)


def test_a_scan_with_nan_voxels_is_refused_by_name_before_training(demo_root, tmp_path):
    import shutil

    import nibabel as nib
    import numpy as np

    root = shutil.copytree(demo_root, tmp_path / "nan-data")
    path = sorted((root / "imagesTr").glob("*.nii.gz"))[-1]
    image = nib.load(path)
    values = image.get_fdata().astype(np.float32)
    values[0, 0, 0] = np.nan
    nib.save(nib.Nifti1Image(values, image.affine), path)
    dm = SegmentationDataModule(str(root), patch_size=(32, 32, 16), num_folds=3, num_workers=0, cache="memory", cache_dir=str(tmp_path))
    with pytest.raises(MedsegError, match=rf"^{path}: 1 voxel\(s\) are NaN or infinite"):
        dm.setup("fit")
