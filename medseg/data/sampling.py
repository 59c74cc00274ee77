"""Training samples that depend only on (seed, epoch, position), so an interrupted and resumed run
draws exactly the patches and augmentations an uninterrupted run would, with any number of workers."""

from __future__ import annotations

from typing import Iterator

import numpy as np
from torch.utils.data import Dataset, Sampler

SampleKey = tuple[int, int, int]  # (epoch, position in epoch, case index)
DEFAULT_PATCH_SIZE = (64, 64, 32)  # training patch (x, y, z) in voxels when a config gives none


class EpochSampler(Sampler[SampleKey]):
    """Yields `samples_per_epoch` case indices drawn with replacement (or one shuffled pass when None).

    Lightning calls ``set_epoch`` at every epoch start (also through its DDP sampler wrapper).
    """

    def __init__(self, num_cases: int, samples_per_epoch: int | None, seed: int) -> None:
        self.num_cases = num_cases
        self.samples_per_epoch = samples_per_epoch
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.samples_per_epoch or self.num_cases

    def __iter__(self) -> Iterator[SampleKey]:
        rng = np.random.default_rng([self.seed, self.epoch])
        if self.samples_per_epoch:
            indices = rng.integers(0, self.num_cases, self.samples_per_epoch)
        else:
            indices = rng.permutation(self.num_cases)
        epoch = self.epoch
        return iter([(epoch, position, int(index)) for position, index in enumerate(indices)])


class SeededSamples(Dataset):
    """View of a MONAI dataset whose random transforms are re-seeded for every (epoch, position) key."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: SampleKey):
        epoch, position, index = key
        sample_seed = int(np.random.SeedSequence([self.seed, epoch, position]).generate_state(1)[0])
        self.dataset.transform.set_random_state(seed=sample_seed)
        return self.dataset[index]
