"""The one place that turns a precision name into what runs: which precision a machine can run, and its autocast.

Precision names are Lightning's ("32-true", "16-mixed", "bf16-mixed") because training hands them to
Lightning's Trainer; the planner and inference use the same names through ``autocast`` below.
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager

import torch

from medseg.errors import MedsegError
from medseg.option_values import PRECISIONS

_AUTOCAST_DTYPES: dict[str, torch.dtype | None] = dict(zip(PRECISIONS, (None, torch.float16, torch.bfloat16)))
CPU_BF16_ENV = "MEDSEG_CPU_BF16"


def check_precision(precision: str) -> str:
    """Return ``precision`` if medseg knows it, else raise a one-line error naming the choices."""
    if precision not in _AUTOCAST_DTYPES:
        raise MedsegError(f"unknown precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    return precision


def autocast_dtype(precision: str) -> torch.dtype | None:
    """Return the autocast dtype of a precision (None for full precision)."""
    return _AUTOCAST_DTYPES[check_precision(precision)]


def autocast(precision: str, device_type: str) -> AbstractContextManager:
    """Return the autocast context every forward pass at ``precision`` on ``device_type`` ("cuda", "cpu") runs under."""
    dtype = autocast_dtype(precision)
    return torch.autocast(device_type, dtype=dtype or torch.float32, enabled=dtype is not None)


def cpu_has_native_bf16() -> bool:
    """Return whether medseg treats this CPU as running bf16 natively (AVX512-BF16 or AMX) rather than emulating it.

    ``MEDSEG_CPU_BF16=1`` forces yes and ``MEDSEG_CPU_BF16=0`` forces no (to try bf16 on any CPU, to keep fp32 on
    one that has it, and so that one machine can test both resolutions); unset or empty, oneDNN is asked.
    """
    forced = os.environ.get(CPU_BF16_ENV, "").strip()
    if forced in ("1", "0"):
        return forced == "1"
    if forced:
        raise MedsegError(f"{CPU_BF16_ENV}={forced!r}: use 1 (run 16-mixed as bf16 on CPU), 0 (run it as 32-true) or leave it unset")
    return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def resolve_precision(requested: str, device_type: str) -> tuple[str, str]:
    """Return (precision to run, one-line reason) for ``requested`` on a "cuda" or "cpu" device.

    fp16 AMP needs CUDA. Without it Lightning falls back to bf16-mixed; on CPUs without native bf16
    (no AVX512-BF16/AMX) bf16 3D convolutions are emulated and much slower than fp32 (20x for the demo's
    step, benchmarks/cpu_precision.py), so there "16-mixed" runs as "32-true" instead. An
    explicit "bf16-mixed" is always honoured, and so is anything on a GPU.
    """
    requested = check_precision(str(requested))
    if requested != "16-mixed" or device_type == "cuda":
        return requested, f"precision {requested} on {'GPU' if device_type == 'cuda' else 'CPU'}"
    forced = f" ({CPU_BF16_ENV} set)" if os.environ.get(CPU_BF16_ENV, "").strip() else ""
    if cpu_has_native_bf16():
        return "bf16-mixed", f"precision 16-mixed requested, no CUDA GPU: running bf16-mixed on CPU (Lightning's CPU fallback; this CPU has native bf16{forced})"
    return "32-true", (
        f"precision 16-mixed requested, no CUDA GPU and this CPU has no native bf16{forced}: running 32-true "
        f"(emulated bf16 is far slower; force it with --trainer.precision bf16-mixed or {CPU_BF16_ENV}=1)"
    )


def inference_precision(trained: str, device_type: str) -> str:
    """Return the precision inference runs a model trained at ``trained`` on a "cuda" or "cpu" device.

    On a GPU: the trained precision (bf16 falls back to 32-true on GPUs without bf16: fp16's narrower range
    can overflow where bf16 did not). On a CPU: bf16 where the model trained in mixed precision and the CPU
    runs bf16 natively, else 32-true.
    """
    trained = check_precision(trained)
    if device_type == "cuda":
        return "32-true" if trained == "bf16-mixed" and not torch.cuda.is_bf16_supported() else trained
    return resolve_precision("16-mixed", "cpu")[0] if trained != "32-true" else "32-true"
