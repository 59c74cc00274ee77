"""Faults injected into the write paths: a read-only folder, renames across filesystems, and a full disk or a kill
half way through writing a file to disk."""

from __future__ import annotations

import errno
import io
import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
import torch


def read_only(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """Make creating files or folders under ``folder`` fail as on a read-only mount (EROFS).

    Simulated rather than chmod-ed: permission bits do not stop root, under whom containers often run the tests.
    """
    folder = Path(folder).absolute()
    real_open, real_mkdir = os.open, os.mkdir

    def refuse(path) -> None:
        if Path(os.fspath(path)).absolute().is_relative_to(folder):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))

    def open_(path, flags, mode=0o777, *, dir_fd=None):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            refuse(path)
        return real_open(path, flags, mode, dir_fd=dir_fd)

    def mkdir(path, mode=0o777, *, dir_fd=None):
        refuse(path)
        return real_mkdir(path, mode, dir_fd=dir_fd)

    monkeypatch.setattr(os, "open", open_)
    monkeypatch.setattr(os, "mkdir", mkdir)


def renames_across_folders_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make a rename between two folders fail with EXDEV, as between two filesystems (``shutil.move`` then copies)."""
    for name in ("rename", "replace"):
        real = getattr(os, name)

        def rename(src, dst, *args, real=real, **kwargs):
            if Path(os.fspath(src)).absolute().parent != Path(os.fspath(dst)).absolute().parent:
                raise OSError(errno.EXDEV, os.strerror(errno.EXDEV), os.fspath(src), os.fspath(dst))
            return real(src, dst, *args, **kwargs)

        monkeypatch.setattr(os, name, rename)


def disk_full() -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def killed() -> None:
    """SIGKILL this process: no cleanup, no ``finally``, as a real crash or the OOM killer."""
    os.kill(os.getpid(), signal.SIGKILL)


def interrupt_disk_writes(monkeypatch: pytest.MonkeyPatch, fault: Callable[[], None]) -> None:
    """Make the next write of a file to disk stop half way with ``fault`` (``disk_full``, ``killed``).

    Covers both ways a checkpoint reaches the disk: ``torch.save`` to a file (a save into memory is left alone) and a
    copy by ``os.sendfile`` (``shutil.move`` across filesystems).
    """
    real_save, real_sendfile = torch.save, os.sendfile

    def save(obj, f, *args, **kwargs):
        if not isinstance(f, (str, os.PathLike)):
            return real_save(obj, f, *args, **kwargs)
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        with open(f, "wb") as out:
            out.write(buffer.getvalue()[: buffer.tell() // 2])
        fault()

    def sendfile(out_fd, in_fd, offset, count):
        real_sendfile(out_fd, in_fd, offset, max(1, os.fstat(in_fd).st_size // 2))
        fault()

    monkeypatch.setattr(torch, "save", save)
    monkeypatch.setattr(os, "sendfile", sendfile)


def other_filesystem(beside: Path) -> Path | None:
    """Return /dev/shm where it is a tmpfs on another filesystem than ``beside`` (a real cross-device move), else None."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK) and os.stat(shm).st_dev != os.stat(beside).st_dev:
        return shm
    return None
