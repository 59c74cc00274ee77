"""LightningDataModule: dataset reading and checking, the fold split (``medseg.data.split``), cached preprocessing, patch sampling."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.trainer.states import RunningStage
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from monai.data import CacheDataset, DataLoader, Dataset, ThreadDataLoader
from monai.transforms import Compose, ToDeviced

from medseg.data.demo import cache_folder, ensure_demo_dataset
from medseg.data.fingerprint import DatasetFingerprint, fingerprint_cache_path
from medseg.data.formats import Case, DatasetSpec, read_dataset
from medseg.data.sampling import DEFAULT_PATCH_SIZE, EpochSampler, SeededSamples
from medseg.data.split import fold_cases, record_split, split_file_for
from medseg.data.transforms import Augmentation, Preprocessing, preprocessing_transforms, training_transforms
from medseg.data.validation import validate_dataset
from medseg.data.volume_cache import (
    CACHE_MODES, VolumeStorage, available_memory_bytes, choose_storage, dataset_bytes, disk_cache, pool_threads_finished_on_error,
    preprocess_missing, split_at_first_random,
)
from medseg.errors import MedsegError

MAX_WORKERS_PER_GPU = 12  # nnU-Net's default number of augmentation processes per GPU

log = logging.getLogger(__name__)


def workers_for(device_type: str, cores: int, ranks_on_machine: int = 1) -> int:
    """Return the data-loading processes ``num_workers: auto`` gives one rank.

    A GPU step waits for no core, so a GPU gets every core of its share but one (the training process), up to
    ``MAX_WORKERS_PER_GPU``: on an H200 with 16 cores, 96^3 patches at 4 per step waited for data 52 % of the time
    with 4 workers and 4.5 % with 12 (benchmarks/results/training/training_cuda_spleen*.md). A CPU step needs the cores
    itself, so workers get half of what is left beyond two: none on 2 cores, where in-process loading trained 96^3
    patches 1.15x faster than 4 workers did (benchmarks/results/training/training_cpu_spleen*.md).
    """
    share = cores // max(1, ranks_on_machine)
    if device_type == "cuda":
        return max(0, min(MAX_WORKERS_PER_GPU, share - 1))
    return max(0, (share - 2) // 2)


class SegmentationDataModule(L.LightningDataModule):
    """Training patches and whole validation volumes from an MSD or nnU-Net v2 dataset (the demo by default).

    The preprocessing arguments (spacing to crop_foreground) are ``Preprocessing``'s fields, with its defaults.

    Args:
        root: dataset folder (or its dataset.json); None generates and uses the built-in demo phantoms.
        batch_size: patches per training step (the batch planner may change it before training).
        patch_size: training patch and sliding-window size in voxels (x, y, z), after resampling.
        spacing: target spacing in mm; None keeps each scan's own.
        normalization: "ct", "ct_zscore", "zscore" or "none"; None picks "ct" for CT datasets, else "zscore".
        ct_window: HU window for "ct" and "ct_zscore" normalisation.
        ct_mean, ct_std: foreground HU mean and std for "ct_zscore" (``python -m medseg.plan`` measures them).
        crop_foreground: crop each scan to the body before training.
        positive_fraction: share of patches centred on a labelled voxel.
        iterations_per_epoch: training steps per epoch (cases drawn with replacement); None = one pass over cases.
            Which cases and augmentations an epoch gets depends only on the seed (``seed_everything``) and
            the epoch, so a resumed run trains on exactly what an uninterrupted one would.
        num_folds: folds of the cross-validation split (a split file must have as many).
        fold: the validation fold, 0 to num_folds - 1, or all: train every fold, then the cross-validation summary
            (``medseg.training.cross_validation``, which reads it before this class does).
        split_seed: seed of the split into folds, when there is no split file yet.
        split_file: the split as nnU-Net's splits_final.json (``medseg.data.split``): read when it exists, else made
            from split_seed and written there. None: the dataset root's splits_final.json when it has one, else medseg's
            own for this dataset, num_folds and split_seed in cache_dir (``medseg.data.split.split_file_for``).
        cache: where preprocessed volumes are kept (``medseg.data.volume_cache``). "auto": preprocessed once into
            cache_dir (keyed by each case's files and the preprocessing: a second start preprocesses nothing), then held
            in memory when the dataset takes at most half of the memory available, else read from disk per patch;
            "memory": preprocessed at every start and held in memory (refused when larger than the memory available);
            "disk": preprocessed once into cache_dir, read from there per patch; "none": preprocessed per patch.
        cache_dir: where disk caches and the demo data live; None = $MEDSEG_CACHE or ~/.cache/medseg.
        num_workers: data-loading worker processes; "auto" chooses from the device and the cores each rank has
            (``workers_for``) when training starts.
        augmentation: random augmentation settings.
        augment_on_gpu: on a GPU, cache the preprocessed volumes in GPU memory and sample and augment patches there,
            in a ThreadDataLoader (MONAI's fast-training recipe: no worker processes, no host-to-GPU copies).
            Needs the training set to fit in GPU memory beside training; off by default until measured.
        check_dataset: check every case (readable, shapes, affines, labels, finite) before training; a case
            already checked and unchanged since (same file sizes and times) is not read again.
    """

    def __init__(
        self,
        root: str | None = None,
        batch_size: int = 2,
        patch_size: tuple[int, int, int] = DEFAULT_PATCH_SIZE,
        spacing: tuple[float, float, float] | None = Preprocessing.spacing,
        normalization: str | None = None,
        ct_window: tuple[float, float] = Preprocessing.ct_window,
        ct_mean: float = Preprocessing.ct_mean,
        ct_std: float = Preprocessing.ct_std,
        crop_foreground: bool = Preprocessing.crop_foreground,
        positive_fraction: float = 0.67,
        iterations_per_epoch: int | None = 25,
        num_folds: int = 5,
        fold: int = 0,
        split_seed: int = 0,
        split_file: str | None = None,
        cache: str = "auto",
        cache_dir: str | None = None,
        num_workers: int | Literal["auto"] = 2,
        augmentation: Augmentation = Augmentation(),
        augment_on_gpu: bool = False,
        check_dataset: bool = True,
    ) -> None:
        super().__init__()
        if cache not in CACHE_MODES:
            raise MedsegError(f"unknown cache {cache!r}: choose one of {', '.join(CACHE_MODES)}")
        if augment_on_gpu and cache not in ("memory", "auto"):
            raise MedsegError(f"augment_on_gpu caches volumes in GPU memory: it needs cache 'memory' or 'auto', not {cache!r}")
        if batch_size < 1:
            raise MedsegError(f"batch_size must be at least 1, got {batch_size}")
        if num_workers != "auto" and (not isinstance(num_workers, int) or num_workers < 0):
            raise MedsegError(f"num_workers must be 'auto' or a number of processes (0 or more), got {num_workers!r}")
        if len(patch_size) != 3 or min(patch_size) < 1:
            raise MedsegError(f"patch_size must be three positive integers, got {patch_size}")
        self.cache_dir = cache_folder(cache_dir)
        self.spec: DatasetSpec = read_dataset(root if root else ensure_demo_dataset(self.cache_dir))
        self.batch_size = batch_size
        self.patch_size = tuple(patch_size)
        self.preprocessing = Preprocessing(
            spacing=tuple(spacing) if spacing else None,
            normalization=normalization or ("ct" if self.spec.is_ct else "zscore"),
            ct_window=tuple(ct_window),
            ct_mean=ct_mean,
            ct_std=ct_std,
            crop_foreground=crop_foreground,
        )
        self.positive_fraction = positive_fraction
        self.iterations_per_epoch = iterations_per_epoch
        self.fold = fold
        self.split_file = Path(split_file) if split_file else split_file_for(self.spec.root, self.cache_dir, num_folds, split_seed)
        if self.split_file and not self.split_file.exists() and self.split_file.resolve().is_relative_to(self.spec.root.resolve()):
            raise MedsegError(
                f"{self.split_file} does not exist, and medseg writes nothing into the dataset folder {self.spec.root}: "
                "give an existing split file, or one outside it"
            )
        self.train_cases, self.val_cases = fold_cases(self.spec.cases, num_folds, fold, split_seed, self.split_file)
        self.cache = cache
        self.storage: VolumeStorage | None = None  # decided at setup, from the dataset's size and the memory available
        self.num_workers = num_workers
        self.augmentation = augmentation
        self.augment_on_gpu = augment_on_gpu
        self.check_dataset = check_dataset
        self.fingerprint: DatasetFingerprint | None = None  # set by the dataset check
        self.sampling_seed = torch.initial_seed()  # set by seed_everything before the CLI builds this

    @property
    def in_channels(self) -> int:
        return len(self.spec.channel_names)

    @property
    def num_classes(self) -> int:
        return len(self.spec.class_names)

    @property
    def class_names(self) -> list[str]:
        return list(self.spec.class_names)

    @property
    def channel_names(self) -> list[str]:
        return list(self.spec.channel_names)

    def _dataset(self, cases: list[Case], transform: Compose) -> Dataset:
        data, cached, random = [case.as_dict() for case in cases], *split_at_first_random(transform)
        source, after_source = data, transform
        with pool_threads_finished_on_error():
            if self.storage.on_disk:
                # keyed by each case's files and the cached transforms' settings: a changed file, spacing or patch is preprocessed again
                source, after_source = disk_cache(data, cached, self.cache_dir / "preprocessed" / self.spec.root.name), random
                if not self.storage.in_memory:
                    preprocess_missing(source, self.num_workers or None)
            if self.storage.in_memory:
                # no copy of the cached volume per patch (50 ms at 250x250x150): the random transforms start with the crop
                # and none works in place, so the cache is never changed (tests/training/test_datamodule.py checks it)
                return CacheDataset(source, after_source, num_workers=self.num_workers or None, progress=True, copy_cache=False)
        return Dataset(source, after_source)

    def setup(self, stage: str | None = None) -> None:
        if self.num_workers == "auto":
            cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
            ranks = self.trainer.num_devices if self.trainer is not None else 1
            self.num_workers = workers_for(self._device.type, cores, ranks)
            log.info("data loading: %d worker processes (num_workers auto: %d cores, %d ranks on this machine, %s)",
                     self.num_workers, cores, ranks, self._device.type)
        if self.trainer is not None and self.trainer.logger is not None and stage in ("fit", None):
            run_folder = Path(self.trainer.log_dir)  # a broadcast: read on every rank
            if self.trainer.is_global_zero:
                record_split(run_folder, self.split_file, self.fold, self.train_cases, self.val_cases)
        if self.check_dataset and self.fingerprint is None:
            self.fingerprint = validate_dataset(self.spec, cache_path=fingerprint_cache_path(self.cache_dir, self.spec.root))
        if self.storage is None:
            self.storage = self._choose_storage()
        checked = self.fingerprint is not None  # the dataset check read every voxel: loading need not check them again
        # each dataset gets transforms of its own: MONAI's reader keeps the last file it read, which would change the
        # disk cache's hash of transforms another dataset had used before
        if stage in ("fit", None) and not hasattr(self, "train_dataset"):
            prep = preprocessing_transforms(self.preprocessing, voxels_checked=checked)
            augment = training_transforms(self.patch_size, self.positive_fraction, self.augmentation)
            to_gpu = [ToDeviced(["image", "label"], self._device)] if self._augments_on_gpu else []
            cached = self._dataset(self.train_cases, Compose([*prep.transforms, *to_gpu, *augment.transforms]))
            self.train_dataset = SeededSamples(cached, self.sampling_seed)
        if stage in ("fit", "validate", None) and not hasattr(self, "val_dataset"):
            self.val_dataset = self._dataset(self.val_cases, preprocessing_transforms(self.preprocessing, voxels_checked=checked))

    def _choose_storage(self) -> VolumeStorage:
        """Return where this run keeps its preprocessed volumes (``cache``), logged in one line with the numbers."""
        if self.cache == "auto" and self._augments_on_gpu:
            return VolumeStorage(False, True, "data.cache auto: held in GPU memory, for augment_on_gpu")
        needed = available = None
        if self.cache in ("auto", "memory"):
            spacing = self.preprocessing.spacing
            needed = dataset_bytes(self.train_cases, self.val_cases, self.in_channels, spacing, self.patch_size, self.fingerprint)
            available = available_memory_bytes()
        ranks = self.trainer.num_devices if self.trainer is not None else 1
        storage = choose_storage(self.cache, needed, available, ranks)
        log.info(storage.summary)
        return storage

    @property
    def _device(self) -> torch.device:
        return self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")

    @property
    def _augments_on_gpu(self) -> bool:
        return self.augment_on_gpu and self._device.type == "cuda"

    def train_dataloader(self) -> DataLoader:
        samples = self.iterations_per_epoch * self.batch_size if self.iterations_per_epoch else None
        settings = {
            "batch_size": self.batch_size,
            "sampler": EpochSampler(len(self.train_dataset), samples, self.sampling_seed),
            "drop_last": samples is None and len(self.train_dataset) > self.batch_size,
        }
        if self._augments_on_gpu:
            return ThreadDataLoader(self.train_dataset, num_workers=0, **settings)
        return DataLoader(
            self.train_dataset,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=self._device.type == "cuda",  # lets Lightning's non_blocking copy to the GPU overlap the step
            **settings,
        )

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        """Move training batches to the device, but leave validation volumes on the CPU, where their windows are
        stitched: the GPU then holds only the training state and one window batch, which the batch planner budgets."""
        if self.trainer is not None and self.trainer.state.stage in (RunningStage.VALIDATING, RunningStage.SANITY_CHECKING):
            return batch
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def val_dataloader(self) -> DataLoader:
        sampler = None
        if self.trainer is not None and self.trainer.world_size > 1:
            # each case on exactly one rank (Lightning's default sampler pads with repeats, which would bias Dice)
            sampler = UnrepeatedDistributedSampler(self.val_dataset, self.trainer.world_size, self.trainer.global_rank, shuffle=False)
        return DataLoader(self.val_dataset, batch_size=1, sampler=sampler, num_workers=min(self.num_workers, 1))
