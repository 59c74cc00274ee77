"""Folder runs: skip or overwrite existing outputs, atomic writes, untouched inputs, a summary, one-line errors."""

from __future__ import annotations

import errno
import gzip
import hashlib
import json
import os
import re
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medseg.errors import MedsegError
from medseg.evaluation import metrics
from medseg.inference import InferenceOptions, segment_scans
from medseg.inference.command import main
from medseg.inference.runner import LOCK_FILE, folder_lock
from medseg.io import nifti

from medseg.model.networks import build_network

from tests.helpers import faults

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
    return main(["--checkpoint", str(checkpoint), "--input", str(source), "--output", str(output), "--window.batch_size", "2", *extra])


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
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(nifti.nib, "save", disk_full)
    summary = segment_scans(random_checkpoint, scans, tmp_path / "out", InferenceOptions(window={"batch_size": 2}))
    assert [name for name, _ in summary.failed] == ["a", "b"]
    assert summary.failed[0][1] == f"cannot write {tmp_path / 'out' / 'a.nii.gz'}: No space left on device: free some disk space (or choose another disk) and rerun (nothing there was changed)"
    assert list((tmp_path / "out").iterdir()) == []  # not even recipe.json: nothing was made


def test_a_full_disk_is_one_line_per_scan_and_a_failing_exit(random_checkpoint, scans, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(nifti.nib, "save", lambda image, path: faults.disk_full())
    monkeypatch.setattr(Path, "write_text", lambda path, text: faults.disk_full())  # recipe.json too: 0 bytes free
    assert _run(random_checkpoint, scans, tmp_path / "out") == 1
    captured = capsys.readouterr()
    assert captured.out.splitlines()[0] == "0 done, 0 skipped, 2 failed" and "Traceback" not in captured.err


def test_a_read_only_output_folder_is_one_line(random_checkpoint, scans, tmp_path, monkeypatch, capsys):
    faults.read_only(monkeypatch, tmp_path / "out")
    assert _run(random_checkpoint, scans, tmp_path / "out") == 1
    assert capsys.readouterr().err.strip() == f"medseg: error: cannot write {tmp_path / 'out'}: Read-only file system: choose a folder you can write to (or fix its permissions) and rerun (nothing there was changed)"


def test_outputs_get_the_mode_the_umask_gives(random_checkpoint, scans, tmp_path):
    previous = os.umask(0o022)
    try:
        assert _run(random_checkpoint, scans / "a.nii.gz", tmp_path / "out", "--probabilities") == 0
    finally:
        os.umask(previous)
    for path in ("a.nii.gz", "probabilities/a.nii.gz", "recipe.json"):
        assert (tmp_path / "out" / path).stat().st_mode & 0o777 == 0o644, path


def test_a_scan_whose_probabilities_failed_keeps_no_half_set_and_is_redone(random_checkpoint, scans, tmp_path, monkeypatch, capsys):
    real_save = nib.save

    def probabilities_disk_full(image, path):
        if Path(path).parent.name == "probabilities" and Path(path).name.startswith(".a."):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(image, path)

    with monkeypatch.context() as patch:
        patch.setattr(nib, "save", probabilities_disk_full)
        assert _run(random_checkpoint, scans, tmp_path / "out", "--probabilities") == 1
    assert not (tmp_path / "out" / "a.nii.gz").exists()  # the label map is not kept without its probabilities
    (tmp_path / "out" / "probabilities" / "b.nii.gz").unlink()  # as an earlier medseg's failed write left it
    capsys.readouterr()
    assert _run(random_checkpoint, scans, tmp_path / "out", "--probabilities") == 0
    assert capsys.readouterr().out.startswith("2 done, 0 skipped")
    assert all((tmp_path / "out" / folder / f"{name}.nii.gz").is_file() for folder in ("", "probabilities") for name in ("a", "b"))


def test_a_run_that_writes_nothing_leaves_recipe_json_as_it_was(random_checkpoint, scans, tmp_path):
    assert _run(random_checkpoint, scans, tmp_path / "out") == 0
    before = (tmp_path / "out" / "recipe.json").stat()
    assert _run(random_checkpoint, scans, tmp_path / "out") == 0  # all skipped
    after = (tmp_path / "out" / "recipe.json").stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_a_rerun_with_other_settings_is_refused_naming_what_differs(random_checkpoint, scans, tmp_path, capsys):
    output = tmp_path / "out"
    assert _run(random_checkpoint, scans, output) == 0
    before = _digest(output)
    capsys.readouterr()
    assert _run(random_checkpoint, scans, output, "--window.overlap", "0.5", "--tta") == 1
    assert capsys.readouterr().err.strip() == (
        f"medseg: error: {output} holds outputs made with other settings (tta: False there, True now; window.overlap: 0.25 there, 0.5 now): "
        "run with those, use another --output folder, or --overwrite to redo every scan"
    )
    assert _digest(output) == before


def test_overwrite_with_other_settings_redoes_every_scan_and_records_them(random_checkpoint, scans, tmp_path, capsys):
    output = tmp_path / "out"
    assert _run(random_checkpoint, scans / "a.nii.gz", output) == 0
    assert _run(random_checkpoint, scans, output) == 0
    assert json.loads((output / "recipe.json").read_text())["cases"] == ["a", "b"]
    capsys.readouterr()
    assert _run(random_checkpoint, scans, output, "--window.overlap", "0.5", "--overwrite") == 0
    assert capsys.readouterr().out.startswith("2 done, 0 skipped")
    record = json.loads((output / "recipe.json").read_text())
    assert record["window"]["overlap"] == 0.5 and record["cases"] == ["a", "b"]
    assert metrics._recipe_class_names(output) == ["background", "box", "slab"]  # evaluation still reads it


def test_an_output_the_record_does_not_list_is_redone(random_checkpoint, scans, tmp_path, capsys):
    output = tmp_path / "out"
    assert _run(random_checkpoint, scans, output) == 0
    assert _run(random_checkpoint, scans / "a.nii.gz", output, "--window.overlap", "0.5", "--overwrite") == 0  # b.nii.gz: still the old settings'
    assert json.loads((output / "recipe.json").read_text())["cases"] == ["a"]
    capsys.readouterr()
    assert _run(random_checkpoint, scans, output, "--window.overlap", "0.5") == 0
    assert capsys.readouterr().out.startswith("1 done, 1 skipped")
    assert json.loads((output / "recipe.json").read_text())["cases"] == ["a", "b"]


def test_a_second_run_into_a_folder_in_use_is_refused_and_a_dead_runs_lock_is_taken_over(random_checkpoint, scans, tmp_path, capsys):
    output = tmp_path / "out"
    with folder_lock(output):  # as another run holds it
        assert _run(random_checkpoint, scans, output) == 1
    assert capsys.readouterr().err.strip() == (
        f"medseg: error: another run is writing into {output} (it holds {output / LOCK_FILE}): wait for it to end, or use another --output folder"
    )
    assert list(output.iterdir()) == []
    (output / LOCK_FILE).touch()  # left by a killed run: its kernel lock went with it
    assert _run(random_checkpoint, scans, output) == 0
    assert not (output / LOCK_FILE).exists()


def test_temporary_files_a_killed_run_left_are_removed(random_checkpoint, scans, tmp_path):
    output = tmp_path / "out"
    (output / "probabilities").mkdir(parents=True)
    for stale in (output / ".a.medseg-tmp-0123456789abcdef.nii.gz", output / "probabilities" / ".b.medseg-tmp-0123456789abcdef.nii.gz"):
        stale.write_bytes(b"half")
    assert _run(random_checkpoint, scans, output) == 0
    assert sorted(p.name for p in output.rglob("*")) == ["a.nii.gz", "b.nii.gz", "probabilities", "recipe.json"]


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
        summary = segment_scans(checkpoint, source, tmp_path / f"out_{source.name}", InferenceOptions(window={"batch_size": 2}))
        assert summary.done == ["case"] and not summary.failed
        assert nib.load(tmp_path / f"out_{source.name}" / "case.nii.gz").shape == (24, 22, 20)


def test_dicom_seg_output_without_the_dicom_extra_is_a_one_line_error_saying_what_to_install(random_checkpoint, scans, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "pydicom", None)  # import pydicom now raises ImportError
    assert _run(random_checkpoint, scans, tmp_path / "out", "--output_format", "dicom-seg") == 1
    err = capsys.readouterr().err.strip()
    assert err == 'medseg: error: --output_format dicom-seg needs DICOM support, which is not installed: pip install "medseg[dicom]"'
    assert not (tmp_path / "out").exists()
