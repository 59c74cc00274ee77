"""Out-of-memory errors that CUDA libraries raise without saying "out of memory" still make a trial back off."""

from __future__ import annotations

import pytest
import torch

from medseg.planning.step import run_trial
from medseg.planning.oom import is_out_of_memory, smaller_size

LIBRARY_OOM_MESSAGES = [
    "CUDA out of memory. Tried to allocate 2.00 GiB",
    "GET was unable to find an engine to execute this computation",
    "cuDNN error: CUDNN_STATUS_ALLOC_FAILED",
    "CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`",
]


@pytest.mark.parametrize("message", LIBRARY_OOM_MESSAGES)
def test_library_allocation_failures_count_as_out_of_memory(message: str) -> None:
    assert is_out_of_memory(RuntimeError(message))


def test_an_out_of_memory_error_wrapped_by_monai_counts_as_out_of_memory() -> None:
    try:
        try:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        except torch.OutOfMemoryError as cause:
            raise RuntimeError("Seems to be OOM. Trying to use smaller batch size") from cause
    except RuntimeError as wrapped:
        assert is_out_of_memory(wrapped)


def test_other_runtime_errors_are_not_out_of_memory() -> None:
    assert not is_out_of_memory(RuntimeError("Expected all tensors to be on the same device"))
    assert not is_out_of_memory(ValueError("out of memory"))  # only RuntimeErrors come from CUDA libraries


@pytest.mark.parametrize("message", LIBRARY_OOM_MESSAGES[1:])
def test_a_trial_failing_inside_cudnn_or_cublas_is_a_failed_measurement_not_an_abort(message: str) -> None:
    def step() -> tuple[int, float | None]:
        raise RuntimeError(message)

    assert not run_trial(step, batch_size=8, precision="16-mixed").fits


@pytest.mark.parametrize(("size", "verified", "smaller"), [(12, [12, 9, 4], 9), (12, [], 6), (3, [8], 1), (1, [], None)])
def test_one_rule_shrinks_training_and_window_batches_after_running_out_of_memory(size, verified, smaller) -> None:
    assert smaller_size(size, verified) == smaller
