import errno
import os
from pathlib import Path

import pytest

from medseg.atomic import atomic_target, atomic_targets, remove_stale_temporaries, write_text_atomic
from medseg.errors import MedsegError
from tests.helpers.faults import read_only


def test_write_replaces_the_file_whole(tmp_path):
    target = tmp_path / "report.json"
    target.write_text("old")
    write_text_atomic(target, "new")
    assert target.read_text() == "new" and list(tmp_path.iterdir()) == [target]


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "case.nii.gz"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_target(target) as temp:
        assert temp.name.endswith(".nii.gz") and temp.parent == tmp_path
        temp.write_text("half")
        raise RuntimeError("killed half way")
    assert target.read_text() == "old" and list(tmp_path.iterdir()) == [target]


@pytest.mark.parametrize("umask, mode", [pytest.param(u, m, id=f"umask-{u:03o}") for u, m in [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)]])
def test_files_get_the_mode_open_gives_under_the_umask(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        write_text_atomic(tmp_path / "summary.json", "{}")
    finally:
        os.umask(previous)
    assert (tmp_path / "summary.json").stat().st_mode & 0o777 == mode


def test_the_file_is_synced_before_the_rename_and_its_folder_after(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("synced", Path(os.readlink(f"/proc/self/fd/{fd}")))), real_fsync(fd)))
    monkeypatch.setattr(os, "replace", lambda src, dst: (events.append(("renamed", Path(dst))), real_replace(src, dst)))
    write_text_atomic(tmp_path / "evaluation.csv", "case,dice\n")
    assert [kind for kind, _ in events] == ["synced", "renamed", "synced"]
    assert events[0][1].parent == tmp_path and events[0][1].name.startswith(".evaluation.")
    assert events[1][1] == tmp_path / "evaluation.csv" and events[2][1] == tmp_path


def test_a_full_disk_is_one_line_naming_the_file_and_leaves_the_old_one(tmp_path, monkeypatch):
    target = tmp_path / "summary.json"
    target.write_text("old")

    def disk_full(path, text):
        Path.write_bytes(path, text.encode()[:2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Path, "write_text", disk_full)
    with pytest.raises(MedsegError) as raised:
        write_text_atomic(target, "new")
    assert str(raised.value) == f"cannot write {target}: No space left on device: free some disk space (or choose another disk) and rerun (nothing there was changed)"
    assert target.read_bytes() == b"old" and list(tmp_path.iterdir()) == [target]


def test_a_read_only_folder_is_one_line_naming_the_file(tmp_path, monkeypatch):
    read_only(monkeypatch, tmp_path)
    target = tmp_path / "new" / "plan.json"
    with pytest.raises(MedsegError) as raised:
        write_text_atomic(target, "{}")
    assert str(raised.value) == (
        f"cannot write {target}: Read-only file system: choose a folder you can write to (or fix its permissions) and rerun"
        " (nothing there was changed)"
    )


def test_files_written_together_appear_together_or_not_at_all(tmp_path):
    labels, probabilities = tmp_path / "a.nii.gz", tmp_path / "probabilities" / "a.nii.gz"
    labels.write_text("old")
    with pytest.raises(MedsegError), atomic_targets([labels, probabilities]) as (labels_temp, probabilities_temp):
        labels_temp.write_text("new")
        raise OSError(errno.ENOSPC, "No space left on device")
    assert labels.read_text() == "old" and not probabilities.exists()
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.nii.gz", "probabilities"]


def test_only_medseg_temporary_files_are_removed_as_stale(tmp_path):
    names = [".a.medseg-tmp-0123456789abcdef.nii.gz", ".last.medseg-tmp-fedcba9876543210.ckpt", ".a.medseg-tmp-mine.nii.gz", ".hidden", "a.nii.gz"]
    for name in names:
        (tmp_path / name).write_text("")
    remove_stale_temporaries(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names[2:])
