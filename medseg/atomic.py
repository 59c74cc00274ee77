"""Atomic file writes: a reader, a kill or a full disk half way never leaves a half-written output or report.

Every file medseg writes goes through here: a temporary file beside the target (a rename is atomic only within one
filesystem), created with the mode a plain ``open()`` gives (the umask decides who may read it), synced to disk,
renamed onto the target, and the folder synced so that the rename survives a power cut.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from medseg.errors import MedsegError, os_error_reason

# ".<stem>.medseg-tmp-<16 hex digits><suffix>": the only files remove_stale_temporaries deletes
TEMPORARY_MARK = ".medseg-tmp-"
_TEMPORARY = re.compile(rf"\..*{re.escape(TEMPORARY_MARK)}[0-9a-f]{{16}}(\..+)?")


def _create_beside(path: Path) -> Path:
    """Create and return an empty, hidden temporary file in ``path``'s folder, keeping its suffix (".nii.gz" included)
    so that writers choosing the format by name still do."""
    suffix = ".nii.gz" if path.name.endswith(".nii.gz") else path.suffix
    temp = path.parent / f".{path.name.removesuffix(suffix)}{TEMPORARY_MARK}{secrets.token_hex(8)}{suffix}"
    os.close(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # 0o666 less the umask, as open() does
    return temp


def _sync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


@contextmanager
def staged_files(paths: Sequence[Path]) -> Iterator[list[Path]]:
    """Yield a temporary path beside each of ``paths``; when the block succeeds, sync them and rename each onto its path.

    All are written before any is renamed, so the outputs of one case appear together. On any exception the
    temporaries are removed, the paths are left as they were, and the exception (an OSError included) goes on as it is.
    """
    paths = [Path(p) for p in paths]
    temps: list[Path] = []
    try:
        for path in paths:
            path.parent.mkdir(parents=True, exist_ok=True)
            temps.append(_create_beside(path))
        yield temps
        for temp in temps:
            _sync(temp)
        for temp, path in zip(temps, paths):
            os.replace(temp, path)
        for folder in dict.fromkeys(path.parent for path in paths):
            try:
                _sync(folder)
            except OSError as err:
                if err.errno not in (errno.EINVAL, errno.ENOTSUP):  # some network filesystems cannot sync a folder
                    raise
    finally:
        for temp in temps:
            temp.unlink(missing_ok=True)


@contextmanager
def atomic_targets(paths: Sequence[Path]) -> Iterator[list[Path]]:
    """``staged_files``, with a failed write (full disk, read-only folder) as one line naming the file."""
    paths = [Path(p) for p in paths]
    try:
        with staged_files(paths) as temps:
            yield temps
    except OSError as err:
        raise write_error(err, paths) from None


@contextmanager
def atomic_target(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path` that replaces it in one rename on success (``atomic_targets``)."""
    with atomic_targets([path]) as (temp,):
        yield temp


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` atomically."""
    with atomic_target(path) as temp:
        temp.write_text(text)


def write_error(err: OSError, paths: Sequence[Path]) -> MedsegError:
    """Return the one-line error for ``err`` raised while writing ``paths``: which files, why and what to do, as every
    failed file operation says it (``os_error_reason``), and that the targets are as they were."""
    return MedsegError(f"cannot write {', '.join(map(str, paths))}: {os_error_reason(err)} (nothing there was changed)")


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Remove the temporary files a killed medseg left in ``folder`` (only names of medseg's own pattern); return them."""
    stale = [p for p in Path(folder).glob(f".*{TEMPORARY_MARK}*") if _TEMPORARY.fullmatch(p.name) and p.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale
