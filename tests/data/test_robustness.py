"""Property test: whatever the geometry, data type or label content of a scan, loading and transforms
give aligned image/label tensors of the patch shape, or the project's one-line error."""

import nibabel as nib
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medseg.data.formats import Case
from medseg.data.transforms import Augmentation, Preprocessing, preprocessing_transforms, training_transforms
from medseg.data.validation import check_case
from medseg.errors import MedsegError

PATCH = (16, 16, 8)


def _affine(spacing, flips, angle_degrees):
    angle = np.deg2rad(angle_degrees)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([-1.0 if f else 1.0 for f in flips]) @ np.diag(spacing)
    return affine


@st.composite
def scans(draw):
    shape = draw(st.tuples(st.integers(1, 20), st.integers(1, 20), st.integers(1, 10)))
    dtype = draw(st.sampled_from([np.int16, np.uint8, np.int32, np.float32, np.float64]))
    spacing = draw(st.tuples(*[st.floats(0.4, 5.0)] * 3))
    flips = draw(st.tuples(st.booleans(), st.booleans(), st.booleans()))
    angle = draw(st.floats(-45.0, 45.0))
    labels = draw(st.sampled_from(["empty", "single voxel", "block", "all"]))
    scaled = draw(st.booleans()) and np.dtype(dtype).kind == "i"
    return shape, dtype, spacing, flips, angle, labels, scaled


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(scan=scans())
def test_loader_gives_aligned_patches_or_a_clear_error(tmp_path, scan):
    shape, dtype, spacing, flips, angle, labels, scaled = scan
    rng = np.random.default_rng(0)
    label = np.zeros(shape, np.uint8)
    if labels == "single voxel":
        label[tuple(s // 2 for s in shape)] = 1
    elif labels == "block":
        label[: max(1, shape[0] // 2), : max(1, shape[1] // 2)] = 2
    elif labels == "all":
        label[:] = 1
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
    values = rng.integers(max(info.min, -1000), min(info.max, 1000), shape) if info else rng.normal(0, 300, shape)
    affine = _affine(spacing, flips, angle)
    image = nib.Nifti1Image(values.astype(dtype), affine)
    if scaled:
        image.header.set_slope_inter(0.5, -100.0)
    nib.save(image, tmp_path / "image.nii.gz")
    nib.save(nib.Nifti1Image(label, affine), tmp_path / "label.nii.gz")
    case = Case("case", (tmp_path / "image.nii.gz",), tmp_path / "label.nii.gz")
    assert check_case(case, num_channels=1, num_classes=3) == []

    try:
        prepared = preprocessing_transforms(Preprocessing(spacing=(1.5, 1.5, 3.0)))(case.as_dict())
        [patch] = training_transforms(PATCH, positive_fraction=0.67, augmentation=Augmentation())(prepared)
    except MedsegError as error:
        assert "\n" not in str(error)
        return
    assert prepared["image"].shape == prepared["label"].shape
    assert patch["image"].shape == patch["label"].shape == (1, *PATCH)
    assert set(np.unique(patch["label"].numpy())) <= {0.0, 1.0, 2.0}
