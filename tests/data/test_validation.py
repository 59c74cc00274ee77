import gzip
import shutil
from dataclasses import replace

import nibabel as nib
import numpy as np
import pytest

from medseg.data.formats import read_dataset
from medseg.data.validation import check_case, validate_dataset
from medseg.errors import MedsegError
from tests.helpers.bad_scans import huge_header, with_affine


@pytest.fixture
def dataset(tmp_path, demo_root):
    """A private copy of the demo dataset that tests may damage."""
    root = shutil.copytree(demo_root, tmp_path / "demo")
    return read_dataset(root)


def _rewrite(path, array, affine=None):
    old = nib.load(path)
    nib.save(nib.Nifti1Image(array, old.affine if affine is None else affine), path)


def _problems(spec, index=0):
    case = spec.cases[index]
    return check_case(case, len(spec.channel_names), len(spec.class_names))


def test_clean_dataset_passes(dataset):
    validate_dataset(dataset, show_progress=False)


def test_missing_file(dataset):
    dataset.cases[0].label.unlink()
    assert _problems(dataset) == [f"{dataset.cases[0].label}: file not found"]


def test_truncated_gzip(dataset):
    path = dataset.cases[0].images[0]
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    [problem] = _problems(dataset)
    assert problem.startswith(f"{path}: cannot read as NIfTI")


def test_not_a_nifti(dataset):
    path = dataset.cases[0].images[0]
    path.write_bytes(gzip.compress(b"hello"))
    [problem] = _problems(dataset)
    assert problem.startswith(f"{path}: cannot read as NIfTI")


def test_shape_mismatch(dataset):
    label = dataset.cases[0].label
    _rewrite(label, np.asarray(nib.load(label).dataobj)[:-1])
    [problem] = _problems(dataset)
    assert "image shape" in problem and "differs from label" in problem and problem.startswith(str(dataset.cases[0].images[0]))


def test_affine_mismatch(dataset):
    label = dataset.cases[0].label
    image = nib.load(label)
    shifted = image.affine.copy()
    shifted[0, 3] += 5.0
    _rewrite(label, np.asarray(image.dataobj), shifted)
    assert _problems(dataset) == [f"{dataset.cases[0].images[0]}: image affine differs from the affine of label {label.name}"]


def test_undeclared_label_value(dataset):
    label = dataset.cases[0].label
    values = np.asarray(nib.load(label).dataobj).copy()
    values[0, 0, 0] = 7
    _rewrite(label, values)
    assert _problems(dataset) == [f"{label}: label values [7] are not declared classes 0..2"]


def test_nan_in_image(dataset):
    path = dataset.cases[0].images[0]
    values = nib.load(path).get_fdata().astype(np.float32)
    values[1, 1, 1] = np.nan
    _rewrite(path, values)
    assert _problems(dataset) == [f"{path}: 1 voxel(s) are NaN or infinite; fix or mask them in the file"]


def test_a_header_claiming_more_voxels_than_its_file_holds_is_one_line_not_a_memory_error(dataset):
    path = huge_header(dataset.cases[2].images[0])
    with pytest.raises(MedsegError) as error:
        validate_dataset(dataset, show_progress=False, workers=1)
    assert str(error.value).startswith(f"{path}: header claims 100000x100000x100000 voxels") and "\n" not in str(error.value)


def test_a_scan_with_1e_5_mm_voxels_is_refused(dataset):
    path, label = dataset.cases[0].images[0], dataset.cases[0].label
    for file in (path, label):
        with_affine(file, np.asarray(nib.load(file).dataobj), np.diag([1e-5, 1e-5, 1e-5, 1.0]))
    assert _problems(dataset) == [
        f"{file}: voxel spacing [1e-05, 1e-05, 1e-05] mm is outside 0.01..100 mm; fix the header's pixdim or affine (are its units mm?)"
        for file in (path, label)
    ]


def test_two_dimensional_image(dataset):
    path = dataset.cases[0].images[0]
    _rewrite(path, np.zeros((8, 8), np.int16), np.eye(4))
    assert f"{path}: image must be 3D (or 4D with channels last)" in _problems(dataset)[0]


def test_wrong_channel_count(dataset):
    spec = replace(dataset, channel_names=("CT", "PET"))
    assert _problems(spec) == [f"{dataset.cases[0].images[0]}: image has 1 channel(s), dataset.json declares 2"]


def test_all_problems_are_reported_together(dataset):
    dataset.cases[0].label.unlink()
    dataset.cases[3].images[0].unlink()
    with pytest.raises(MedsegError) as error:
        validate_dataset(dataset, show_progress=False)
    message = str(error.value)
    assert message.startswith(f"2 problems in dataset {dataset.root}:\n")
    assert str(dataset.cases[0].label) in message and str(dataset.cases[3].images[0]) in message


def test_a_single_problem_is_one_line_naming_the_file(dataset):
    dataset.cases[1].label.unlink()
    with pytest.raises(MedsegError) as error:
        validate_dataset(dataset, show_progress=False)
    assert str(error.value) == f"{dataset.cases[1].label}: file not found"
