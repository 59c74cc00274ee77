"""Small stand-ins shared by the tests: a two-level MONAI UNet config on 16^3 patches, random patch batches, memory curves."""

from __future__ import annotations

from collections.abc import Callable

import lightning as L
import torch
from torch.utils.data import DataLoader

PATCH = (16, 16, 16)
TINY_UNET = {"channels": [4, 8], "strides": [2], "num_res_units": 0}
MiB = 2**20


class RandomPatches(L.LightningDataModule):
    """Random image/label patches in the data module's batch layout; reads ``batch_size`` when the loader is built."""

    def __init__(self, batch_size: int, num_samples: int = 8, patch_size: tuple[int, int, int] = PATCH) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.patch_size = patch_size
        generator = torch.Generator().manual_seed(0)
        self.samples = [
            {"image": torch.randn(1, *patch_size, generator=generator), "label": torch.randint(0, 2, (1, *patch_size), generator=generator)}
            for _ in range(num_samples)
        ]

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.samples, batch_size=self.batch_size)


class WithValidation(RandomPatches):
    """Random patches, and one random 24^3 volume to validate on."""

    def val_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(1)
        volume = {"image": torch.randn(1, 24, 24, 24, generator=generator), "label": torch.randint(0, 2, (1, 24, 24, 24), generator=generator)}
        return DataLoader([volume], batch_size=1)


def linear_curve(fixed: float, per_sample: float) -> Callable[[int], float]:
    """A memory curve that is exactly a line, as the planner assumes."""
    return lambda batch_size: fixed + per_sample * batch_size
