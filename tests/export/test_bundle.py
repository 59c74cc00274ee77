"""The export's MONAI bundle, run by MONAI's own runner, segments scans as medseg.infer does."""

from __future__ import annotations

from pathlib import Path

import pytest

from medseg.inference import command as infer
from tests.helpers.cli import run_module
from tests.helpers.label_maps import voxel_agreement

AGREEMENT = 0.9999  # the target for real scans


@pytest.mark.slow
def test_monais_bundle_runner_gives_medseg_infers_labels(exported: Path, scans: Path, tmp_path: Path):
    one_scan = tmp_path / "scans"
    one_scan.mkdir()
    scan = sorted(scans.glob("*.nii.gz"))[0]
    (one_scan / scan.name).symlink_to(scan)
    assert infer.main(["--checkpoint", str(exported), "-i", str(one_scan), "-o", str(tmp_path / "medseg"), "--device", "cpu"]) == 0
    ran = run_module("monai.bundle", "run", "--config_file", str(exported / "configs" / "inference.json"),
                     "--dataset_dir", str(one_scan), "--output_dir", str(tmp_path / "monai"))
    assert ran.returncode == 0, ran.stderr[-2000:]
    # the same transforms, windows and inversion (background as what foreground leaves, as medseg); MONAI resamples with
    # grid_sample, medseg axis by axis, so a voxel whose two best classes are within float32 rounding (1e-7) may flip:
    # 2 of 471,282 voxels on this scan (docs/how-to/export.md)
    assert voxel_agreement(tmp_path / "monai", tmp_path / "medseg") >= AGREEMENT
