"""MONAI dictionary transforms: deterministic preprocessing (cached) and random training augmentation."""

from __future__ import annotations

import logging
import math
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any, Hashable, Iterator, Mapping, Sequence

import torch
from monai import transforms as T
from monai.transforms.utils import map_binary_to_indices

from medseg.errors import MedsegError
from medseg.io.nifti import check_finite

NORMALIZATIONS = ("ct", "ct_zscore", "zscore", "none")
# MONAI's loader builds every reader it knows beside the one asked for; with pydicom installed (the dicom extra) its
# nvImageCodec DICOM reader warns, on a logger and as a warning, that the GPU decoder is absent.
NVIMGCODEC_LOGGER = "monai.data.nvimgcodec_pydicom_plugin"
NVIMGCODEC_WARNING = "NvImgCodecPydicomReader"
# "ct_zscore" clips to the foreground's percentiles (organ HU), too high to tell body from air: crop above this
BODY_HU = -500.0


@dataclass(frozen=True)
class Preprocessing:
    """How a scan is brought into the network's space; stored in checkpoints so inference can rebuild it.

    Attributes:
        spacing: target voxel spacing in mm (x, y, z) after reorientation; None keeps the scan's own.
        axcodes: orientation the network sees (MONAI ``Orientationd`` codes).
        normalization: "ct" clips to ``ct_window`` (HU) and scales to [0, 1]; "ct_zscore" clips to
            ``ct_window`` then subtracts ``ct_mean`` and divides by ``ct_std`` (nnU-Net's CT scheme, with the
            dataset's foreground statistics); "zscore" normalises each channel over its non-zero voxels
            (MRI); "none" leaves intensities alone.
        ct_window: (low, high) HU window for "ct" and "ct_zscore".
        ct_mean, ct_std: the dataset's foreground HU mean and standard deviation for "ct_zscore".
        crop_foreground: crop to the bounding box of the body (CT: above the window's low end, or above
            ``BODY_HU`` for "ct_zscore"; otherwise: non-zero) before normalising.
    """

    spacing: tuple[float, float, float] | None = (1.5, 1.5, 3.0)
    axcodes: str = "RAS"
    normalization: str = "ct"
    ct_window: tuple[float, float] = (-200.0, 300.0)
    crop_foreground: bool = True
    ct_mean: float = 0.0
    ct_std: float = 1.0

    def __post_init__(self) -> None:
        if self.normalization not in NORMALIZATIONS:
            raise MedsegError(f"unknown normalization {self.normalization!r}: choose one of {', '.join(NORMALIZATIONS)}")
        if self.spacing is not None and (len(self.spacing) != 3 or min(self.spacing) <= 0):
            raise MedsegError(f"spacing must be three positive numbers in mm, got {self.spacing}")
        if self.ct_window[0] >= self.ct_window[1]:
            raise MedsegError(f"ct_window must be (low, high) with low < high, got {self.ct_window}")
        if self.ct_std <= 0:
            raise MedsegError(f"ct_std must be positive, got {self.ct_std}")

    def to_dict(self) -> dict[str, Any]:
        """Plain data (lists, not tuples) for YAML, JSON and weights-only checkpoints."""
        data = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Preprocessing":
        values = dict(data)
        for key in ("spacing", "ct_window"):
            if values.get(key) is not None:
                values[key] = tuple(float(v) for v in values[key])
        return cls(**values)

    @property
    def foreground_threshold(self) -> float:
        if self.normalization == "ct_zscore":
            return BODY_HU
        return self.ct_window[0] if self.normalization == "ct" else 0.0


def _above(image: torch.Tensor, threshold: float) -> torch.Tensor:
    return image > threshold


@contextmanager
def _quiet_unused_dicom_reader() -> Iterator[None]:
    """Silence the nvImageCodec reader's notice while a loader is built: medseg loads NIfTI with nibabel and reads DICOM
    with pydicom and highdicom, so the notice says nothing about a run."""
    logger = logging.getLogger(NVIMGCODEC_LOGGER)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=NVIMGCODEC_WARNING, category=UserWarning)
            yield
    finally:
        logger.setLevel(level)


class FiniteVoxelsd(T.MapTransform):
    """Refuse an image with a NaN or infinite voxel, naming its file, as it is loaded: the CT window would clip an
    infinite voxel to a plausible value, and resampling spreads a NaN to its neighbours."""

    def __call__(self, data: Mapping[Hashable, Any]) -> Mapping[Hashable, Any]:
        for key in self.key_iterator(data):
            check_finite(data[key].numpy(), data[key].meta.get("filename_or_obj", key))
        return data


def preprocessing_transforms(
    prep: Preprocessing, image_key: str = "image", label_key: str | None = "label", voxels_checked: bool = False
) -> T.Compose:
    """Return the deterministic (cacheable, invertible) transforms from file paths to normalised tensors.

    Images are read with nibabel; a list of paths (one per channel, nnU-Net style) is stacked as channels. Each
    image's voxels are checked finite as it loads (``FiniteVoxelsd``), unless ``voxels_checked``: the dataset check
    has read every file (now, or unchanged since), so that each volume is checked once.
    """
    keys = [image_key] + ([label_key] if label_key else [])
    modes = ["bilinear"] + (["nearest"] if label_key else [])
    with _quiet_unused_dicom_reader():
        load = T.LoadImaged(keys, reader="NibabelReader", image_only=True)
    steps: list = [
        load,
        T.EnsureChannelFirstd(keys),
        T.EnsureTyped(keys, dtype=torch.float32, track_meta=True),
        *([] if voxels_checked else [FiniteVoxelsd(image_key)]),
        T.Orientationd(keys, axcodes=prep.axcodes, labels=None),
    ]
    if prep.spacing is not None:
        steps.append(T.Spacingd(keys, pixdim=prep.spacing, mode=modes, dtype=torch.float32))
    if prep.crop_foreground:
        # the crop's box is kept in the image's applied operations (inversion reads it there), not as keys of its own:
        # those are numpy arrays when a case is preprocessed and tensors when read back from the disk cache, and
        # a batch mixing the two cannot be collated
        steps.append(
            T.CropForegroundd(
                keys, source_key=image_key, select_fn=partial(_above, threshold=prep.foreground_threshold), allow_smaller=True,
                start_coord_key=None, end_coord_key=None,
            )
        )
    if prep.normalization == "ct":
        low, high = prep.ct_window
        steps.append(T.ScaleIntensityRanged(image_key, a_min=low, a_max=high, b_min=0.0, b_max=1.0, clip=True))
    elif prep.normalization == "ct_zscore":
        low, high = prep.ct_window
        steps.append(T.ScaleIntensityRanged(image_key, a_min=low, a_max=high, b_min=low, b_max=high, clip=True))
        steps.append(T.NormalizeIntensityd(image_key, subtrahend=prep.ct_mean, divisor=prep.ct_std))
    elif prep.normalization == "zscore":
        steps.append(T.NormalizeIntensityd(image_key, nonzero=True, channel_wise=True))
    return T.Compose(steps)


# nnU-Net keeps 10,000 positions per class (at least 1 % of its voxels) to centre patches on
CROP_CENTRES, CROP_CENTRE_SHARE = 10_000, 0.01


class CropCentresd(T.MapTransform):
    """Store where patches may be centred, as ``fg_indices`` and ``bg_indices`` for ``RandCropByPosNegLabeld``.

    Deterministic, so it runs once per case in the cache; without it every patch draw scans the whole label
    volume for them (a quarter of a patch's sampling and augmentation time at 96^3). Like nnU-Net's class
    locations, each list is a seeded draw of ``CROP_CENTRES`` positions (or ``CROP_CENTRE_SHARE`` of them, if more).
    """

    def __init__(self, label_key: str = "label") -> None:
        super().__init__([label_key])
        self.label_key = label_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        generator = torch.Generator().manual_seed(0)
        foreground, background = map_binary_to_indices(d[self.label_key])
        d["fg_indices"], d["bg_indices"] = (_drawn(torch.as_tensor(i), generator) for i in (foreground, background))
        return d


def _drawn(indices: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    keep = max(CROP_CENTRES, math.ceil(CROP_CENTRE_SHARE * len(indices)))
    if len(indices) <= keep:
        return indices
    return indices[torch.randint(len(indices), (keep,), generator=generator)]


@dataclass(frozen=True)
class Augmentation:
    """Random training augmentation; probabilities are per patch. A transform whose probability is 0 is left out.

    Attributes:
        flip_prob: mirroring, per axis.
        rotate90_prob: a quarter turn in the axial plane.
        rotate_degrees, rotate_prob: a rotation up to this angle about the z axis (``rotate_all_axes``: about every axis).
        intensity_scale, intensity_shift, intensity_prob: intensity times (1 +- scale), then plus +- shift.
        noise_std, noise_prob: Gaussian noise.
        scale_range, scale_prob: zoom by a factor in this range (image trilinear, label nearest), size kept.
        gamma_range, gamma_prob: gamma on the patch's intensity range, its mean and spread kept (MONAI ``retain_stats``).
        low_resolution_range, low_resolution_prob: down- then upsample the image by a factor in this range.
    """

    flip_prob: float = 0.5
    rotate90_prob: float = 0.25
    rotate_degrees: float = 15.0
    rotate_prob: float = 0.2
    rotate_all_axes: bool = False
    intensity_scale: float = 0.1
    intensity_shift: float = 0.1
    intensity_prob: float = 0.5
    noise_std: float = 0.02
    noise_prob: float = 0.15
    scale_range: tuple[float, float] = (0.7, 1.4)
    scale_prob: float = 0.0
    gamma_range: tuple[float, float] = (0.7, 1.5)
    gamma_prob: float = 0.0
    low_resolution_range: tuple[float, float] = (0.5, 1.0)
    low_resolution_prob: float = 0.0


# nnU-Net's augmentation (nnUNetTrainer.get_training_transforms) with MONAI's transforms: rotation up to 30 degrees
# about every axis and scaling 0.7-1.4 (each p 0.2), noise (p 0.1), brightness x 0.75-1.25 (p 0.15), low-resolution
# simulation (p 0.25), gamma 0.7-1.5 (p 0.3), mirroring on every axis; no quarter turns
NNUNET_AUGMENTATION = Augmentation(
    rotate90_prob=0.0, rotate_degrees=30.0, rotate_all_axes=True, intensity_scale=0.25, intensity_shift=0.0,
    intensity_prob=0.15, noise_prob=0.1, scale_prob=0.2, gamma_prob=0.3, low_resolution_prob=0.25,
)


def _added_augmentation(aug: Augmentation, keys: list[str], image_key: str) -> list:
    """Return the transforms of the augmentation's nnU-Net-like additions that are on (probability above 0)."""
    steps: list = []
    if aug.scale_prob > 0:
        low, high = aug.scale_range
        steps.append(T.RandZoomd(keys, prob=aug.scale_prob, min_zoom=low, max_zoom=high, mode=["trilinear", "nearest"], keep_size=True))
    if aug.low_resolution_prob > 0:
        steps.append(T.RandSimulateLowResolutiond(image_key, prob=aug.low_resolution_prob, zoom_range=aug.low_resolution_range))
    if aug.gamma_prob > 0:
        steps.append(T.RandAdjustContrastd(image_key, prob=aug.gamma_prob, gamma=aug.gamma_range, retain_stats=True))
    return steps


def training_transforms(
    patch_size: Sequence[int],
    positive_fraction: float,
    augmentation: Augmentation,
    image_key: str = "image",
    label_key: str = "label",
) -> T.Compose:
    """Return patch sampling plus augmentation, applied after the cached preprocessing.

    The deterministic head (padding to the patch, crop centres) is cached with the preprocessing by MONAI's
    cached datasets. ``positive_fraction`` is the share of patches centred on a foreground voxel (nnU-Net uses 1/3).
    """
    if not 0.0 <= positive_fraction <= 1.0:
        raise MedsegError(f"positive_fraction must be between 0 and 1, got {positive_fraction}")
    keys = [image_key, label_key]
    aug = augmentation
    radians = aug.rotate_degrees * torch.pi / 180.0
    return T.Compose(
        [
            T.SpatialPadd(keys, spatial_size=patch_size),
            CropCentresd(label_key),
            T.RandCropByPosNegLabeld(
                keys,
                label_key=label_key,
                spatial_size=patch_size,
                pos=positive_fraction,
                neg=1.0 - positive_fraction,
                num_samples=1,
                fg_indices_key="fg_indices",
                bg_indices_key="bg_indices",
            ),
            *[T.RandFlipd(keys, prob=aug.flip_prob, spatial_axis=axis) for axis in range(3)],
            T.RandRotate90d(keys, prob=aug.rotate90_prob, spatial_axes=(0, 1)),
            T.RandRotated(
                keys, range_x=radians if aug.rotate_all_axes else 0.0, range_y=radians if aug.rotate_all_axes else 0.0,
                range_z=radians, prob=aug.rotate_prob, keep_size=True, mode=["bilinear", "nearest"],
            ),
            T.RandScaleIntensityd(image_key, factors=aug.intensity_scale, prob=aug.intensity_prob),
            T.RandShiftIntensityd(image_key, offsets=aug.intensity_shift, prob=aug.intensity_prob),
            T.RandGaussianNoised(image_key, std=aug.noise_std, prob=aug.noise_prob),
            *_added_augmentation(aug, keys, image_key),
            # plain tensors for collation and the network: a MetaTensor adds Python work to every operation
            T.EnsureTyped(keys, track_meta=False),
        ]
    )
