"""Label maps land on the input's exact grid (shape, affine, qform/sform codes) whatever its geometry."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medseg.inference.command import main

from .conftest import SPACING_MM, phantom_hu, phantom_labels, save_scan


def _oblique() -> np.ndarray:
    angle = np.deg2rad(20.0)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rotation * SPACING_MM
    affine[:3, 3] = [-30.0, 12.5, 80.0]
    return affine


def _write_geometries(folder: Path) -> dict[str, float]:
    """Write the phantom in each geometry; return the Dice each must reach against the known labels."""
    labels, hu = phantom_labels(), phantom_hu(phantom_labels())
    iso = SPACING_MM
    save_scan(folder / "ras.nii.gz", hu, np.diag([iso, iso, iso, 1.0]))
    save_scan(folder / "lps.nii.gz", hu, np.diag([-iso, -iso, iso, 1.0]), qform_code=2, sform_code=0)
    save_scan(folder / "oblique.nii.gz", hu, _oblique(), qform_code=1, sform_code=4)
    save_scan(folder / "anisotropic.nii", hu, np.diag([1.0, -1.2, 3.0, 1.0]))
    save_scan(folder / "one_channel_4d.nii.gz", hu[..., None], np.diag([iso, iso, iso, 1.0]))
    scaled = nib.Nifti1Image(((hu + 1024) / 2).astype(np.int16), np.diag([-iso, iso, iso, 1.0]))
    scaled.header.set_slope_inter(2.0, -1024.0)
    nib.save(scaled, folder / "int16_scaled.nii.gz")
    assert labels.any()
    # Resampling 1.0 x 1.2 x 3.0 mm voxels to 1.5 mm and back moves box borders by up to a voxel.
    return {"ras": 1.0, "lps": 1.0, "oblique": 1.0, "anisotropic": 0.9, "one_channel_4d": 1.0, "int16_scaled": 1.0}


@pytest.fixture(scope="module")
def segmented(trained_checkpoint, tmp_path_factory: pytest.TempPathFactory):
    scans, output = tmp_path_factory.mktemp("scans"), tmp_path_factory.mktemp("labels")
    dice_floor = _write_geometries(scans)
    assert main(["--checkpoint", str(trained_checkpoint), "--input", str(scans), "--output", str(output)]) == 0
    return scans, output, dice_floor


def _dice(a: np.ndarray, b: np.ndarray, label: int) -> float:
    return 2 * np.sum((a == label) & (b == label)) / (np.sum(a == label) + np.sum(b == label))


@pytest.mark.parametrize("name", ["ras", "lps", "oblique", "anisotropic", "one_channel_4d", "int16_scaled"])
def test_label_map_has_the_input_grid_and_matches_the_known_segmentation(segmented, name):
    scans, output, dice_floor = segmented
    source = nib.load(next(scans.glob(f"{name}.nii*")))
    result = nib.load(output / f"{name}.nii.gz")
    assert result.shape == source.shape[:3]
    assert result.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(result.affine, source.affine)
    for ours, theirs in ((result.get_qform(coded=True), source.get_qform(coded=True)), (result.get_sform(coded=True), source.get_sform(coded=True))):
        np.testing.assert_allclose(ours[0] if ours[0] is not None else 0, theirs[0] if theirs[0] is not None else 0, atol=1e-6)
        assert ours[1] == theirs[1]
    assert nib.aff2axcodes(result.affine) == nib.aff2axcodes(source.affine)
    np.testing.assert_allclose(result.header.get_zooms(), source.header.get_zooms()[:3])
    assert result.header.get_slope_inter() == (None, None)
    labels = np.asarray(result.dataobj)
    for label in (1, 2):
        assert _dice(labels, phantom_labels(), label) >= dice_floor[name]
