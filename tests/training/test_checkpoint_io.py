"""Checkpoints are written beside their target and renamed: a kill or a full disk at any point of a write leaves the
previous checkpoint loadable, even where Lightning's temporary folder is on another filesystem than the run."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from medseg.errors import MedsegError
from medseg.training.checkpoint_io import AtomicCheckpointIO
from tests.helpers.cli import REPO, tiny_train_args
from tests.helpers.faults import disk_full, interrupt_disk_writes, other_filesystem, renames_across_folders_fail

# Saves epoch 0's checkpoint, then is killed half way through writing epoch 1's, across filesystems.
KILLED_DURING_SAVE = """
import sys
import pytest
import torch
from medseg.errors import MedsegError
from medseg.training.checkpoint_io import AtomicCheckpointIO
from tests.helpers.faults import interrupt_disk_writes, killed, renames_across_folders_fail

checkpoint_io = AtomicCheckpointIO()
checkpoint_io.save_checkpoint({"epoch": 0, "weights": torch.ones(2**18)}, sys.argv[1])
faults = pytest.MonkeyPatch()
renames_across_folders_fail(faults)
interrupt_disk_writes(faults, killed)
checkpoint_io.save_checkpoint({"epoch": 1, "weights": torch.zeros(2**18)}, sys.argv[1])
"""


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def staging_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Return a folder for Lightning's staging (TMPDIR) on another filesystem than the run folders where the machine
    has one (/dev/shm); ``renames_across_folders_fail`` makes the move a copy in any case, so the tests mean the same
    everywhere."""
    runs = tmp_path_factory.getbasetemp()
    elsewhere = other_filesystem(runs)
    folder = Path(tempfile.mkdtemp(dir=elsewhere or runs))
    yield folder
    shutil.rmtree(folder)


@pytest.fixture
def staged_elsewhere(staging_folder: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Stage in ``staging_folder`` in this process."""
    monkeypatch.setenv("TMPDIR", str(staging_folder))
    monkeypatch.setattr(tempfile, "tempdir", str(staging_folder))
    return staging_folder


@pytest.fixture(scope="module")
def killed_save(tmp_path_factory: pytest.TempPathFactory, staging_folder: Path) -> Path:
    """Return the checkpoint folder after a process was killed while writing its last.ckpt over a good one (read only)."""
    folder = tmp_path_factory.mktemp("run") / "checkpoints"
    env = {**os.environ, "TMPDIR": str(staging_folder)}
    run = subprocess.run([sys.executable, "-c", KILLED_DURING_SAVE, str(folder / "last.ckpt")], cwd=REPO, env=env, capture_output=True, text=True)
    assert run.returncode == -signal.SIGKILL, run.stderr
    return folder


def test_a_kill_while_last_ckpt_is_written_across_filesystems_leaves_the_previous_one_loadable(killed_save):
    assert _load(killed_save / "last.ckpt")["epoch"] == 0


def test_the_next_save_into_the_folder_removes_the_temporary_file_a_kill_left(killed_save, tmp_path):
    folder = shutil.copytree(killed_save, tmp_path / "checkpoints")
    others = [p.name for p in folder.iterdir() if p.name != "last.ckpt"]
    assert len(others) == 1 and others[0].startswith(".last.")  # the half-written temporary file
    (folder / ".notes.ckpt").write_text("the user's")
    AtomicCheckpointIO().save_checkpoint({"epoch": 1}, folder / "best-epoch001.ckpt")
    assert sorted(p.name for p in folder.iterdir()) == [".notes.ckpt", "best-epoch001.ckpt", "last.ckpt"]


def test_a_full_disk_while_a_checkpoint_is_written_leaves_the_earlier_one_and_no_partial_file(tmp_path, staged_elsewhere, monkeypatch):
    folder = tmp_path / "checkpoints"
    checkpoint_io = AtomicCheckpointIO()
    checkpoint_io.save_checkpoint({"epoch": 0, "weights": torch.ones(2**18)}, folder / "last.ckpt")
    renames_across_folders_fail(monkeypatch)
    interrupt_disk_writes(monkeypatch, disk_full)
    with pytest.raises(OSError) as raised:  # an OSError, which training reports as "disk full ...; earlier checkpoints are intact"
        checkpoint_io.save_checkpoint({"epoch": 1, "weights": torch.ones(2**18)}, folder / "last.ckpt")
    assert raised.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert [p.name for p in folder.iterdir()] == ["last.ckpt"] and _load(folder / "last.ckpt")["epoch"] == 0
    assert list(staged_elsewhere.iterdir()) == []


def test_checkpoints_follow_the_umask(tmp_path):
    previous = os.umask(0o027)
    try:
        AtomicCheckpointIO().save_checkpoint({"epoch": 0}, tmp_path / "last.ckpt")
    finally:
        os.umask(previous)
    assert (tmp_path / "last.ckpt").stat().st_mode & 0o777 == 0o640


def test_the_training_command_writes_checkpoints_through_it(demo_root, tmp_path):
    from medseg.training.cli import build_cli

    assert isinstance(build_cli(tiny_train_args(demo_root, tmp_path)).trainer.strategy.checkpoint_io, AtomicCheckpointIO)


def test_a_full_disk_in_training_says_earlier_checkpoints_are_intact_and_they_are(demo_root, tmp_path, staged_elsewhere, monkeypatch):
    from medseg import training as train

    renames_across_folders_fail(monkeypatch)
    args = tiny_train_args(demo_root, tmp_path) + ["--trainer.callbacks+=tests.helpers.crash.DiskFullInSecondEpoch"]
    with pytest.raises(MedsegError, match=r"^disk full while writing .*; earlier checkpoints are intact"):
        train.run(args)
    checkpoints = sorted(tmp_path.rglob("*.ckpt"))
    assert [p.name for p in checkpoints if "epoch000" in p.name]  # the first epoch's, best and last
    assert not [p for p in tmp_path.rglob(".*") if p.is_file()]  # no partial temporary file
    for path in checkpoints:
        assert _load(path)["epoch"] == 0
