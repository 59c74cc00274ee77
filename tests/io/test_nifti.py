"""The one check of a volume every command reads through: a header whose voxels fit its file, a scan's geometry, and
finite voxels; each refusal is one line naming the file, and real files pass."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest

from medseg.errors import MedsegError
from medseg.io.nifti import load_header, read_voxels
from tests.helpers.bad_scans import huge_header, with_affine, with_block

VOXELS = np.zeros((8, 8, 8), np.float32)


def _refusal(path, read=load_header) -> str:
    with pytest.raises(MedsegError) as raised:
        read(path)
    text = str(raised.value)
    assert "\n" not in text and text.startswith(f"{path}: ")
    return text


@pytest.mark.parametrize("name", ["huge.nii.gz", "huge.nii"])
def test_a_header_claiming_more_voxels_than_its_file_holds_is_refused_before_they_are_allocated(tmp_path, name):
    path = huge_header(tmp_path / name)
    assert "header claims 100000x100000x100000 voxels of float32" in _refusal(path, read_voxels)


def test_the_gzip_bound_passes_the_most_compressible_real_file(tmp_path):
    """All zeros at gzip's best level come near deflate's 1032:1; the bound must still let them through."""
    path = tmp_path / "zeros.nii.gz"
    path.write_bytes(gzip.compress(nib.Nifti1Image(np.zeros((256, 256, 256), np.uint8), np.eye(4)).to_bytes(), compresslevel=9))
    assert path.stat().st_size < 20_000
    assert load_header(path).shape == (256, 256, 256)


def test_a_truncated_uncompressed_file_is_refused_by_its_size(tmp_path):
    path = tmp_path / "cut.nii"
    nib.save(nib.Nifti1Image(np.ones((20, 20, 20), np.int16), np.eye(4)), path)
    path.write_bytes(path.read_bytes()[:-100])
    assert "more than its 16,252-byte file can hold" in _refusal(path)


def _affine(linear) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = linear
    return affine


BAD_GEOMETRY = {
    "singular": (_affine([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 1.0]]), "affine is singular"),
    "zero spacing": (np.diag([1.0, 1.0, 0.0, 1.0]), "voxel spacing [1.0, 1.0, 0.0] mm is outside 0.01..100 mm"),
    "1e-5 mm": (np.diag([1e-5, 1e-5, 1e-5, 1.0]), "voxel spacing [1e-05, 1e-05, 1e-05] mm is outside 0.01..100 mm"),
    "NaN": (np.diag([1.0, np.nan, 1.0, 1.0]), "affine holds NaN or infinite values"),
}


@pytest.mark.parametrize("problem", BAD_GEOMETRY)
def test_impossible_geometry_is_refused_with_one_line_naming_the_file(tmp_path, problem):
    affine, message = BAD_GEOMETRY[problem]
    assert message in _refusal(with_affine(tmp_path / "scan.nii.gz", VOXELS, affine))


@pytest.mark.parametrize("linear", [np.diag([-0.8, -0.8, 2.5]), np.diag([0.1, 0.1, 0.1]), np.diag([0.9, 0.9, 10.0]),
                                    [[1.0, 0.0, 0.0], [0.0, 0.87, 0.0], [0.0, 0.5, 1.0]]], ids=["mirrored", "0.1 mm", "10 mm slices", "30 degree tilt"])
def test_scanner_geometry_passes(tmp_path, linear):
    assert load_header(with_affine(tmp_path / "scan.nii.gz", VOXELS, _affine(linear))).shape == VOXELS.shape


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_voxels_are_refused_with_their_count(tmp_path, value):
    path = with_block(tmp_path / "scan.nii.gz", VOXELS, np.eye(4), value)
    assert "64 voxel(s) are NaN or infinite" in _refusal(path, read_voxels)
