"""Atomic file writes: a reader, or a crash half way, never sees a half-written output or report."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_target(path: Path) -> Iterator[Path]:
    """Yield a hidden temporary path beside `path` that replaces it in one rename on success.

    The temporary file keeps `path`'s suffix (".nii.gz" included) so writers that choose the format by
    name still do; on an exception it is removed and `path` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = ".nii.gz" if path.name.endswith(".nii.gz") else path.suffix
    handle, temp = tempfile.mkstemp(prefix=f".{path.name.removesuffix(suffix)}.", suffix=suffix, dir=path.parent)
    os.close(handle)
    try:
        yield Path(temp)
        os.replace(temp, path)
    finally:
        Path(temp).unlink(missing_ok=True)


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` atomically."""
    with atomic_target(path) as temp:
        temp.write_text(text)
