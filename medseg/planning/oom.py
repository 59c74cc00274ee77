"""Recognising out-of-memory errors and giving their memory back, for trial steps, training and inference."""

from __future__ import annotations

import gc

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
