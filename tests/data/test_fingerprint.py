import os
import shutil

import nibabel as nib
import numpy as np
import pytest

from medseg.io import nifti
from medseg.data.fingerprint import fingerprint_cache_path
from medseg.data.formats import read_dataset
from medseg.data.validation import validate_dataset


@pytest.fixture
def dataset(tmp_path, demo_root):
    return read_dataset(shutil.copytree(demo_root, tmp_path / "demo"))


@pytest.fixture
def reads(monkeypatch):
    """The files read in full (voxels, not just the header) since the fixture was set up."""
    files = []
    original = nifti.read_voxels

    def counting(path):
        files.append(str(path))
        return original(path)

    monkeypatch.setattr(nifti, "read_voxels", counting)
    return files


def _check(spec, tmp_path):
    return validate_dataset(spec, show_progress=False, cache_path=fingerprint_cache_path(tmp_path / "cache", spec.root), workers=1)


def test_second_check_of_an_unchanged_dataset_reads_no_voxels(dataset, tmp_path, reads):
    first = _check(dataset, tmp_path)
    assert len(reads) == 2 * len(dataset.cases)
    reads.clear()
    assert _check(dataset, tmp_path) == first and reads == []


def test_a_touched_file_is_checked_again(dataset, tmp_path, reads):
    _check(dataset, tmp_path)
    reads.clear()
    label = dataset.cases[2].label
    os.utime(label, ns=(label.stat().st_atime_ns, label.stat().st_mtime_ns + 10**9))
    _check(dataset, tmp_path)
    assert sorted(reads) == sorted([str(dataset.cases[2].images[0]), str(label)])


def test_a_file_broken_after_a_clean_check_is_reported(dataset, tmp_path):
    _check(dataset, tmp_path)
    path = dataset.cases[0].images[0]
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(Exception, match=f"{path}: cannot read as NIfTI"):
        _check(dataset, tmp_path)


def test_fingerprint_has_spacing_shape_intensities_and_class_voxels_in_ras_order(dataset, tmp_path):
    case = dataset.cases[0]
    image, label = nib.load(case.images[0]), np.asarray(nib.load(case.label).dataobj)
    [fingerprint] = _check(dataset, tmp_path).cases[:1]
    # the demo's affine flips x and y but keeps the axis order, so RAS order is voxel order
    assert fingerprint.shape == image.shape
    np.testing.assert_allclose(fingerprint.spacing, image.header.get_zooms(), rtol=1e-5)
    assert fingerprint.class_voxels == tuple(int((label == k).sum()) for k in range(3))
    foreground = np.asarray(image.dataobj)[label > 0]
    [channel] = fingerprint.channels
    assert channel.count == foreground.size and len(channel.samples) == 1000
    np.testing.assert_allclose(channel.total / channel.count, foreground.mean(), rtol=1e-9)


def test_parallel_check_gives_the_same_fingerprint_as_one_process(dataset, tmp_path):
    parallel = validate_dataset(dataset, show_progress=False, workers=2)
    assert parallel == validate_dataset(dataset, show_progress=False, workers=1)


def _without_slice_spacing(path):
    """Rewrite `path` with an sform whose slice axis has length 0 (and no qform)."""
    voxels = np.asarray(nib.load(path).dataobj)
    header = nib.Nifti1Header()
    header.set_data_shape(voxels.shape)
    header.set_data_dtype(voxels.dtype)
    header.set_sform(np.diag([1.0, 1.0, 0.0, 1.0]), code=1)
    nib.save(nib.Nifti1Image(voxels, None, header=header), path)


def test_zero_spacing_is_a_one_line_error_naming_the_file(dataset):
    path = dataset.cases[0].images[0]
    _without_slice_spacing(path)
    with pytest.raises(Exception) as error:
        validate_dataset(dataset, show_progress=False, workers=1)
    assert str(error.value).startswith(f"{path}: voxel spacing [1.0, 1.0, 0.0] mm is outside 0.01..100 mm") and "\n" not in str(error.value)
