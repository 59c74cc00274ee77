"""Folder runs: skip or overwrite existing outputs, atomic writes, untouched inputs, a summary, one-line errors."""

from __future__ import annotations

import gzip
import hashlib
import re
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medseg.errors import MedsegError
from medseg.infer import main
from medseg.inference import InferenceOptions, segment_scans
from medseg import nifti

from medseg.model.networks import build_network

from .conftest import SPACING_MM, TINY_UNET, medseg_meta, phantom_hu, phantom_labels, save_checkpoint, save_scan

AFFINE = np.diag([SPACING_MM, SPACING_MM, SPACING_MM, 1.0])


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture()
def scans(tmp_path: Path) -> Path:
    folder = tmp_path / "scans"
    folder.mkdir()
    hu = phantom_hu(phantom_labels((24, 22, 20)))
    for name in ("a", "b"):
        save_scan(folder / f"{name}.nii.gz", hu, AFFINE)
    return folder


def _run(checkpoint: Path, source: Path, output: Path, *extra: str) -> int:
    return main(["--checkpoint", str(checkpoint), "--input", str(source), "--output", str(output), "--sw-batch-size", "2", *extra])


def test_existing_outputs_are_skipped_and_left_alone(random_checkpoint, scans, tmp_path, capsys):
    output = tmp_path / "out"
    assert _run(random_checkpoint, scans, output) == 0
    before = _digest(output)
    (output / "a.nii.gz").touch()
    stamp = (output / "a.nii.gz").stat().st_mtime_ns
    assert _run(random_checkpoint, scans, output) == 0
    assert "0 done, 2 skipped" in capsys.readouterr().out
    assert (output / "a.nii.gz").stat().st_mtime_ns == stamp and _digest(output) == before


def test_overwrite_redoes_existing_outputs(random_checkpoint, scans, tmp_path, capsys):
    output = tmp_path / "out"
    output.mkdir()
    (output / "a.nii.gz").write_bytes(b"stale")
    assert _run(random_checkpoint, scans, output, "--overwrite") == 0
    assert "2 done, 0 skipped, 0 failed" in capsys.readouterr().out
    assert nib.load(output / "a.nii.gz").shape == (24, 22, 20)


def test_inputs_are_never_modified_and_no_temporary_files_remain(random_checkpoint, scans, tmp_path):
    before = _digest(scans)
    assert _run(random_checkpoint, scans, tmp_path / "out", "--probabilities") == 0
    assert _digest(scans) == before
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.nii.gz", "b.nii.gz", "probabilities", "recipe.json"]
    probabilities = nib.load(tmp_path / "out" / "probabilities" / "a.nii.gz")
    assert probabilities.shape == (24, 22, 20, 3)
    np.testing.assert_array_equal(probabilities.affine, AFFINE)


def test_output_folder_that_would_overwrite_an_input_is_refused(random_checkpoint, scans):
    with pytest.raises(MedsegError, match="would overwrite the input scan"):
        segment_scans(random_checkpoint, scans, scans)


def test_a_failed_write_leaves_neither_a_partial_output_nor_a_temporary_file(random_checkpoint, scans, tmp_path, monkeypatch):
    def disk_full(image, path):
        Path(path).write_bytes(b"half")
        raise OSError("No space left on device")

    monkeypatch.setattr(nifti.nib, "save", disk_full)
    summary = segment_scans(random_checkpoint, scans, tmp_path / "out", InferenceOptions(sw_batch_size=2))
    assert [name for name, _ in summary.failed] == ["a", "b"]
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["recipe.json"]


def test_the_route_taken_is_shown_for_each_scan(random_checkpoint, scans, tmp_path, capsys):
    assert _run(random_checkpoint, scans / "a.nii.gz", tmp_path / "out", "--device", "cpu") == 0  # the default is a GPU where there is one
    assert "a: windows on cpu (32-true, batch 2), stitched on cpu" in capsys.readouterr().err


def _bad_scans(folder: Path) -> dict[str, str]:
    """Write one bad file of each kind; return the message each must fail with."""
    hu = phantom_hu(phantom_labels((24, 22, 20)))
    save_scan(folder / "good.nii.gz", hu, AFFINE)
    (folder / "corrupt.nii.gz").write_bytes(b"this is not a NIfTI file at all")
    whole = gzip.compress(nib.Nifti1Image(hu, AFFINE).to_bytes())
    (folder / "truncated.nii.gz").write_bytes(whole[: len(whole) // 2])
    save_scan(folder / "flat.nii.gz", hu[:, :, 0], AFFINE)
    save_scan(folder / "two_channels.nii.gz", np.stack([hu, hu], axis=-1), AFFINE)
    return {
        "corrupt": "corrupt.nii.gz: cannot read as NIfTI",
        "truncated": "truncated.nii.gz: cannot read as NIfTI \\(corrupt or truncated\\?\\)",
        "flat": "flat.nii.gz is not a 3D volume",
        "two_channels": "two_channels.nii.gz has 2 channel\\(s\\) but the model expects 1",
    }


def test_bad_scans_fail_with_one_line_each_while_the_others_are_done(random_checkpoint, tmp_path, capsys):
    scans = tmp_path / "scans"
    scans.mkdir()
    expected = _bad_scans(scans)
    assert _run(random_checkpoint, scans, tmp_path / "out") == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "1 done, 0 skipped, 4 failed"
    failures = dict(line.removeprefix("failed ").split(": ", 1) for line in out[1:])
    assert sorted(failures) == sorted(expected)
    for name, pattern in expected.items():
        assert re.search(pattern, failures[name]), failures[name]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good.nii.gz", "recipe.json"]


def test_multichannel_scans_are_read_from_channel_files_or_a_4d_file(tmp_path):
    network = build_network("UNet", 2, 3, **TINY_UNET)
    checkpoint = save_checkpoint(tmp_path / "two.ckpt", network, medseg_meta(TINY_UNET, in_channels=2))
    hu = phantom_hu(phantom_labels((24, 22, 20)))
    split, stacked = tmp_path / "split", tmp_path / "stacked"
    split.mkdir()
    stacked.mkdir()
    for channel in (0, 1):
        save_scan(split / f"case_000{channel}.nii.gz", hu, AFFINE)
    save_scan(stacked / "case.nii.gz", np.stack([hu, hu], axis=-1), AFFINE)
    for source in (split, stacked):
        summary = segment_scans(checkpoint, source, tmp_path / f"out_{source.name}", InferenceOptions(sw_batch_size=2))
        assert summary.done == ["case"] and not summary.failed
        assert nib.load(tmp_path / f"out_{source.name}" / "case.nii.gz").shape == (24, 22, 20)


def test_dicom_seg_output_without_the_dicom_extra_is_a_one_line_error_saying_what_to_install(random_checkpoint, scans, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "pydicom", None)  # import pydicom now raises ImportError
    assert _run(random_checkpoint, scans, tmp_path / "out", "--output-format", "dicom-seg") == 1
    err = capsys.readouterr().err.strip()
    assert err == 'medseg: error: --output-format dicom-seg needs DICOM support, which is not installed: pip install "medseg[dicom]"'
    assert not (tmp_path / "out").exists()
