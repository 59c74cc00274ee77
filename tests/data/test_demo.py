import logging

import nibabel as nib
import numpy as np
from scipy.ndimage import binary_dilation, distance_transform_edt, find_objects, maximum_filter
from scipy.ndimage import label as ndimage_label

from medseg.data.demo import FINE_CLASS_NAMES, FINE_SPACING, ensure_demo_dataset, fine_structures, make_case, make_fine_case
from medseg.data.formats import read_dataset


def test_same_seed_and_index_give_identical_cases():
    first, second = make_case(7, 3), make_case(7, 3)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)


def test_different_cases_differ_in_size_and_content():
    shapes = {make_case(0, i)[0].shape for i in range(4)}
    assert len(shapes) == 4


def test_cases_look_like_ct_scans():
    image, label, affine = make_case(0, 0)
    assert image.dtype == np.int16 and label.dtype == np.uint8
    assert image.min() <= -900 and 100 < np.median(image[label == 1]) < 160  # air and enhanced organ in HU
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    assert spacing[2] > 1.8 * spacing[0]  # anisotropic: thick slices
    assert nib.aff2axcodes(affine) == ("L", "P", "S")
    assert not np.allclose(affine[:3, :3], np.diag(np.diag(affine[:3, :3])))  # oblique


def test_two_foreground_classes_touch():
    _, label, _ = make_case(0, 1)
    organ, lesion = label == 1, label == 2
    assert organ.sum() > 5 * lesion.sum() > 0
    touching = (organ[1:] & lesion[:-1]) | (organ[:-1] & lesion[1:])
    assert touching.any()


def test_files_keep_geometry_and_dataset_is_msd(demo_root):
    spec = read_dataset(demo_root)
    assert spec.layout == "msd" and spec.class_names == ("background", "organ", "lesion") and spec.is_ct
    case = spec.cases[2]
    image, label, affine = make_case(0, 2)
    stored = nib.load(case.images[0])
    np.testing.assert_allclose(stored.affine, affine, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(stored.dataobj), image)
    np.testing.assert_array_equal(np.asarray(nib.load(case.label).dataobj), label)


def test_demo_is_generated_once_and_reused(tmp_path):
    root = ensure_demo_dataset(tmp_path, num_cases=2, seed=1)
    stamp = (root / "dataset.json").stat().st_mtime_ns
    assert ensure_demo_dataset(tmp_path, num_cases=2, seed=1) == root
    assert (root / "dataset.json").stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [root.name]  # no staging folder left behind


def test_demo_says_where_its_data_is_once_a_use(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="medseg.data.demo")
    for _ in ("generated", "reused"):
        caplog.clear()
        root = ensure_demo_dataset(tmp_path, num_cases=2, seed=1)
        messages = [record.getMessage() for record in caplog.records]
        assert len(messages) == 1 and str(root) in messages[0]


SMALL = (64, 64, 20)


def test_fine_structure_cases_are_deterministic_and_differ_by_index():
    first, again, other = make_fine_case(3, 1, SMALL), make_fine_case(3, 1, SMALL), make_fine_case(3, 2, SMALL)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[1], other[1])


def test_fine_structure_cases_hold_an_organ_thin_vessels_and_small_lesions_at_anisotropic_spacing():
    image, label, affine = make_fine_case(0, 0, SMALL)
    np.testing.assert_allclose(np.linalg.norm(affine[:3, :3], axis=0), FINE_SPACING)
    organ, vessels, lesions = (label == k for k in (1, 2, 3))
    assert organ.sum() > 10 * vessels.sum() > 0
    inside = distance_transform_edt(vessels)  # voxels to the nearest non-vessel voxel
    ridge = vessels & (inside >= maximum_filter(inside, size=3))
    assert 1.5 <= np.median(2 * inside[ridge]) <= 3.0  # about 2 voxels wide
    components, count = ndimage_label(lesions)
    assert count >= 4
    widths = [max(s.stop - s.start for s in box[:2]) for box in find_objects(components)]
    assert all(3 <= w <= 6 for w in widths)  # about 5 voxels across in-plane (a lesion cut by a vessel is narrower)
    assert (organ & binary_dilation(lesions)).any() and (~organ & ~vessels & lesions).any()  # in the organ and outside
    soft_tissue = np.median(image[label == 1])
    assert np.median(image[vessels]) > soft_tissue + 15  # brighter than the organ, but blurred and noisy
    assert image.min() <= -900


def test_fine_structures_are_an_msd_dataset_cached_under_their_own_name(tmp_path):
    root = ensure_demo_dataset(tmp_path, num_cases=2, seed=0, phantoms=fine_structures(SMALL))
    assert root.name == "fine-64x64x20-v1-n2-seed0"
    spec = read_dataset(root)
    assert spec.layout == "msd" and spec.class_names == FINE_CLASS_NAMES and spec.is_ct and len(spec.cases) == 2
    np.testing.assert_array_equal(np.asarray(nib.load(spec.cases[1].label).dataobj), make_fine_case(0, 1, SMALL)[1])
    assert ensure_demo_dataset(tmp_path, num_cases=2, seed=0) != root  # the demo is another dataset
