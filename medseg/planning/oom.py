"""Recognising out-of-memory errors, giving their memory back, and the size to retry with, for trial steps, training and inference."""

from __future__ import annotations

import gc
from collections.abc import Sequence

import torch

# What CUDA libraries say when an allocation inside them fails, without saying "out of memory".
_OOM_MESSAGES = (
    "out of memory",
    "CUDNN_STATUS_ALLOC_FAILED",
    "CUBLAS_STATUS_ALLOC_FAILED",
    "GET was unable to find an engine",  # cuDNN v8 API: no engine fits in the workspace left
)


def is_out_of_memory(error: BaseException) -> bool:
    """True for torch's OutOfMemoryError and for RuntimeErrors whose message says memory ran out, also as the
    ``__cause__`` of another error (MONAI re-raises a sliding window's OOM as "Seems to be OOM")."""
    while error is not None:
        if isinstance(error, torch.OutOfMemoryError):
            return True
        if isinstance(error, RuntimeError) and any(message in str(error) for message in _OOM_MESSAGES):
            return True
        error = error.__cause__
    return False


def release_memory() -> None:
    """Collect reference cycles (a failed step's traceback pins its tensors) and return cached CUDA blocks."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def smaller_size(size: int, verified: Sequence[int] = ()) -> int | None:
    """Return the size to retry with after running out of memory at ``size``: the largest verified size below it,
    else half of it (memory only shrinks with the batch); None at size 1, below which there is nothing to try.

    One rule for training's batch (OOM recovery) and inference's window batch."""
    if size <= 1:
        return None
    return max((b for b in verified if b < size), default=size // 2)
