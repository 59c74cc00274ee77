from dataclasses import replace

import nibabel as nib
import numpy as np
import pytest
import torch

from medseg.data.transforms import Augmentation, Preprocessing, preprocessing_transforms, training_transforms
from medseg.errors import MedsegError


@pytest.fixture
def blocky_case(tmp_path):
    """An LPS, anisotropic scan whose HU value encodes the label (0 -> 0 HU, 1 -> 100 HU, 2 -> 200 HU)."""
    label = np.zeros((40, 36, 16), np.uint8)
    label[8:30, 6:20, 3:12] = 1
    label[20:30, 20:30, 5:14] = 2
    affine = np.diag([-1.2, -1.2, 3.0, 1.0])
    affine[:3, 3] = [10.0, -5.0, 30.0]
    image = (label.astype(np.int16) * 100) + 0
    nib.save(nib.Nifti1Image(image, affine), tmp_path / "image.nii.gz")
    nib.save(nib.Nifti1Image(label, affine), tmp_path / "label.nii.gz")
    return {"image": str(tmp_path / "image.nii.gz"), "label": str(tmp_path / "label.nii.gz")}


def _plain(spacing=(1.5, 1.5, 2.0)):
    return Preprocessing(spacing=spacing, normalization="none", crop_foreground=False)


def test_preprocessing_reorients_to_ras_and_resamples(blocky_case):
    out = preprocessing_transforms(_plain())(blocky_case)
    image, label = out["image"], out["label"]
    assert image.shape == label.shape and image.shape[0] == 1
    np.testing.assert_allclose(np.diag(image.affine.numpy())[:3], [1.5, 1.5, 2.0], atol=1e-5)  # RAS: positive diagonal
    assert image.shape[1:] == (32, 29, 24)  # 40*1.2/1.5, 36*1.2/1.5, 16*3/2 voxels
    assert set(torch.unique(label).tolist()) == {0.0, 1.0, 2.0}


def test_preprocessing_keeps_image_and_label_aligned(blocky_case):
    out = preprocessing_transforms(_plain())(blocky_case)
    agreement = (torch.round(out["image"] / 100) == out["label"]).float().mean()
    assert agreement > 0.97  # only interpolated boundary voxels may differ


def test_augmentation_moves_image_and_label_together(blocky_case):
    out = preprocessing_transforms(_plain())(blocky_case)
    no_intensity = Augmentation(flip_prob=1.0, rotate90_prob=1.0, rotate_prob=1.0, intensity_prob=0.0, noise_prob=0.0)
    augment = training_transforms((24, 24, 16), positive_fraction=1.0, augmentation=no_intensity)
    augment.set_random_state(3)
    [patch] = augment(out)
    assert patch["image"].shape == patch["label"].shape == (1, 24, 24, 16)
    assert patch["label"].max() > 0  # positive patch
    agreement = (torch.round(patch["image"] / 100) == patch["label"]).float().mean()
    assert agreement > 0.93



def test_nnunets_augmentation_zooms_and_rotates_image_and_label_together_keeping_label_values(blocky_case):
    from medseg.data.transforms import NNUNET_AUGMENTATION

    out = preprocessing_transforms(_plain())(blocky_case)
    spatial_only = replace(NNUNET_AUGMENTATION, rotate_prob=1.0, scale_prob=1.0, intensity_prob=0.0, noise_prob=0.0, gamma_prob=0.0, low_resolution_prob=0.0)
    augment = training_transforms((24, 24, 16), positive_fraction=1.0, augmentation=spatial_only)
    augment.set_random_state(3)
    [patch] = augment(out)
    assert patch["image"].shape == patch["label"].shape == (1, 24, 24, 16)
    assert set(torch.unique(patch["label"]).tolist()) <= {0.0, 1.0, 2.0}  # nearest: never a blend of two classes
    assert (torch.round(patch["image"] / 100) == patch["label"]).float().mean() > 0.9


def test_nnunets_intensity_augmentation_runs_and_the_default_leaves_its_additions_out(blocky_case):
    from medseg.data.transforms import NNUNET_AUGMENTATION

    names = lambda aug: {type(t).__name__ for t in training_transforms((24, 24, 16), 1.0, aug).transforms}
    added = {"RandZoomd", "RandSimulateLowResolutiond", "RandAdjustContrastd"}
    assert not added & names(Augmentation()) and added <= names(NNUNET_AUGMENTATION)
    always = replace(NNUNET_AUGMENTATION, gamma_prob=1.0, low_resolution_prob=1.0)
    augment = training_transforms((24, 24, 16), positive_fraction=1.0, augmentation=always)
    augment.set_random_state(0)
    [patch] = augment(preprocessing_transforms(_plain())(blocky_case))
    assert torch.isfinite(patch["image"]).all() and patch["image"].shape == (1, 24, 24, 16)


def test_ct_normalisation_windows_hu_to_unit_range(blocky_case):
    prep = Preprocessing(spacing=None, normalization="ct", ct_window=(0.0, 200.0), crop_foreground=False)
    image = preprocessing_transforms(prep, label_key=None)({"image": blocky_case["image"]})["image"]
    assert image.min() == 0.0 and image.max() == 1.0
    assert torch.allclose(torch.unique(image), torch.tensor([0.0, 0.5, 1.0]))


def test_ct_zscore_clips_to_the_window_then_applies_the_dataset_mean_and_std(blocky_case):
    prep = Preprocessing(spacing=None, normalization="ct_zscore", ct_window=(50.0, 150.0), ct_mean=100.0, ct_std=25.0, crop_foreground=False)
    image = preprocessing_transforms(prep, label_key=None)({"image": blocky_case["image"]})["image"]
    # 0, 100 and 200 HU clip to 50, 100 and 150, then (HU - 100) / 25
    assert torch.allclose(torch.unique(image), torch.tensor([-2.0, 0.0, 2.0]), atol=1e-6)


def test_zscore_normalises_nonzero_voxels(blocky_case):
    prep = Preprocessing(spacing=None, normalization="zscore", crop_foreground=False)
    image = preprocessing_transforms(prep, label_key=None)({"image": blocky_case["image"]})["image"]
    inside = image[image != 0]
    assert abs(float(inside.mean())) < 1e-4 and abs(float(inside.std()) - 1.0) < 1e-2


def test_foreground_crop_keeps_only_the_body(blocky_case):
    prep = Preprocessing(spacing=None, normalization="none", crop_foreground=True, ct_window=(50.0, 300.0))
    out = preprocessing_transforms(prep)(blocky_case)
    assert out["image"].shape[1:] == (22, 24, 11)  # bounding box of voxels above 50 HU
    assert out["label"].shape == out["image"].shape


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"normalization": "percentile"}, "unknown normalization 'percentile'"),
        ({"spacing": (1.0, 0.0, 1.0)}, "spacing must be three positive numbers"),
        ({"ct_window": (100.0, -100.0)}, "ct_window must be"),
    ],
)
def test_bad_preprocessing_values_are_named(kwargs, message):
    with pytest.raises(MedsegError, match=message):
        Preprocessing(**kwargs)


def test_preprocessing_round_trips_as_plain_data():
    prep = Preprocessing(spacing=(1.0, 1.0, 2.5), ct_window=(-100.0, 200.0))
    assert Preprocessing.from_dict(prep.to_dict()) == prep
    assert isinstance(prep.to_dict()["spacing"], list)


def test_crop_centres_are_labelled_and_unlabelled_voxels_drawn_once_for_the_cache():
    from medseg.data.transforms import CROP_CENTRES, CropCentresd

    label = torch.zeros(1, 300, 200, 50)
    label[0, 100:200, 50:150, 10:40] = 1  # 300,000 labelled voxels, 2.7 million unlabelled
    first, second = CropCentresd()({"label": label}), CropCentresd()({"label": label})
    flat = label.flatten()
    assert len(first["fg_indices"]) == CROP_CENTRES and bool((flat[first["fg_indices"]] == 1).all())
    assert len(first["bg_indices"]) == 27_000 and bool((flat[first["bg_indices"]] == 0).all())  # 1 % of them
    assert torch.equal(first["fg_indices"], second["fg_indices"])  # deterministic: cacheable


def test_building_the_preprocessing_gives_no_notice_about_monais_unused_gpu_dicom_reader(caplog, recwarn):
    pytest.importorskip("pydicom")  # MONAI builds its nvImageCodec DICOM reader only where pydicom is installed
    preprocessing_transforms(_plain())
    assert "nvImageCodec" not in caplog.text
    assert not [warning for warning in recwarn if "NvImgCodec" in str(warning.message)]
