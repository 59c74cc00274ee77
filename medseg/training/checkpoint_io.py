"""Checkpoints written beside their target and renamed, so that a kill or a full disk never costs the previous one."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from medseg.atomic import remove_stale_temporaries, staged_files

log = logging.getLogger("medseg")


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local saves go through ``medseg.atomic.staged_files``.

    Lightning's own save stages the file in ``tempfile.gettempdir()``: where the run folder is on another filesystem the
    final move is a copy straight into ``last.ckpt``, which a kill or a full disk leaves truncated. Here the temporary
    file sits beside the target, is synced and then renamed. The first save into a folder removes the temporary files a
    killed run left there. A full disk stays an ``OSError`` (ENOSPC) for the training command to report. Remote paths
    (``s3://`` and the like) are saved as Lightning saves them.
    """

    def __init__(self) -> None:
        super().__init__()
        self._cleaned: set[Path] = set()

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        if path.parent not in self._cleaned:
            stale = remove_stale_temporaries(path.parent)
            if stale:
                log.info(f"removed {len(stale)} temporary checkpoint file(s) a stopped run left in {path.parent}")
            self._cleaned.add(path.parent)
        with staged_files([path]) as (temp,):
            torch.save(checkpoint, temp)
