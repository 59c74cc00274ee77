"""One training step at a given batch size, and its peak memory on a CUDA device.

The step is the same for every backend (CUDA measurement, CPU estimator, simulated capacity) so that
what is measured is what training runs: forward and loss under the precision's autocast, backward
(through a GradScaler for fp16), optimizer step and zero_grad.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from lightning.pytorch.utilities.memory import garbage_collection_cuda, is_oom_error
from torch import nn

from medseg.errors import MedsegError

_AUTOCAST_DTYPES: dict[str, torch.dtype | None] = {
    "32-true": None,
    "16-mixed": torch.float16,
    "bf16-mixed": torch.bfloat16,
}
PRECISIONS = tuple(_AUTOCAST_DTYPES)

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]


@dataclass
class TrainingSetup:
    """The model pieces a training step needs, as training uses them.

    Attributes:
        net: the network (its current device is where steps run).
        loss_fn: ``loss_fn(logits, label)`` with label (B, 1, X, Y, Z) class indices.
        make_optimizer: builds the training optimizer for the given parameters (a fresh one per trial,
            so optimizer state is counted and then freed).
        in_channels: image channels.
        out_channels: classes including background.
        patch_size: spatial size (X, Y, Z) of one training patch.
        config: plain description of the model (network name and arguments); keys the plan cache.
    """

    net: nn.Module
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    make_optimizer: OptimizerFactory
    in_channels: int
    out_channels: int
    patch_size: tuple[int, int, int]
    config: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StepMeasurement:
    """What one trial step at ``batch_size`` cost; ``peak_bytes`` is None when it ran out of memory."""

    batch_size: int
    precision: str
    peak_bytes: int | None
    seconds: float | None = None

    @property
    def fits(self) -> bool:
        """True when the step finished without running out of memory."""
        return self.peak_bytes is not None


def setup_from_module(module: Any, make_optimizer: OptimizerFactory | None = None) -> TrainingSetup:
    """Return the training setup of a ``SegmentationModule`` (its ``net``, ``loss_fn`` and hyperparameters).

    ``make_optimizer`` defaults to AdamW with the module's learning rate and weight decay, as its
    ``configure_optimizers`` builds (which cannot be called here: it needs a running trainer).
    """
    h = module.hparams
    if make_optimizer is None:
        make_optimizer = lambda params: torch.optim.AdamW(params, lr=h.learning_rate, weight_decay=h.weight_decay)  # noqa: E731
    config = {"network": h.network, "network_kwargs": dict(h.network_kwargs), "in_channels": h.in_channels, "out_channels": h.out_channels}
    return TrainingSetup(
        net=module.net,
        loss_fn=module.loss_fn,
        make_optimizer=make_optimizer,
        in_channels=h.in_channels,
        out_channels=h.out_channels,
        patch_size=tuple(h.patch_size),
        config=config,
    )


def autocast_dtype(precision: str) -> torch.dtype | None:
    """Return the autocast dtype of a Lightning precision string (None for full precision)."""
    if precision not in _AUTOCAST_DTYPES:
        raise MedsegError(f"unknown precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    return _AUTOCAST_DTYPES[precision]


def is_out_of_memory(error: BaseException) -> bool:
    """True for torch's OutOfMemoryError and for the older RuntimeError messages Lightning recognises."""
    return isinstance(error, torch.OutOfMemoryError) or is_oom_error(error)


def synthetic_batch(setup: TrainingSetup, batch_size: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Return a random training batch shaped and typed like the data module's: float32 image (B, C, X, Y, Z)
    and float32 class indices (B, 1, X, Y, Z), as MONAI's transforms deliver them."""
    shape = (batch_size, *setup.patch_size)
    return {
        "image": torch.randn(shape[0], setup.in_channels, *shape[1:], device=device),
        "label": torch.randint(0, setup.out_channels, (shape[0], 1, *shape[1:]), device=device).float(),
    }


def device_of(net: nn.Module) -> torch.device:
    """Return the device the network's parameters live on."""
    return next(net.parameters()).device


def run_training_step(
    setup: TrainingSetup, batch_size: int, precision: str, train: bool = True, batch: dict[str, torch.Tensor] | None = None
) -> None:
    """Run one step at ``batch_size``: forward+loss under autocast, then backward, optimizer step, zero_grad.

    With ``train=False`` only the forward pass runs, under no_grad (sliding-window inference sizing).
    ``batch`` defaults to a random one on the network's device. Every tensor the step creates is local,
    so it is freed when this returns or raises.
    """
    device = device_of(setup.net)
    dtype = autocast_dtype(precision)
    batch = batch if batch is not None else synthetic_batch(setup, batch_size, device)
    setup.net.train(train)
    autocast = torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)
    if not train:
        with torch.no_grad(), autocast:
            setup.net(batch["image"])
        return
    optimizer = setup.make_optimizer(setup.net.parameters())
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "16-mixed")
    try:
        with autocast:
            loss = setup.loss_fn(setup.net(batch["image"]), batch["label"])
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    finally:
        # set_to_none frees the gradients even when backward ran out of memory half way
        optimizer.zero_grad(set_to_none=True)


@contextmanager
def preserved_weights(net: nn.Module) -> Iterator[None]:
    """Restore the network's weights, buffers and train/eval mode after trial steps changed them."""
    saved = {name: value.detach().to("cpu", copy=True) for name, value in net.state_dict().items()}
    training = net.training
    try:
        yield
    finally:
        net.load_state_dict(saved)
        net.train(training)


def measure_cuda_step(setup: TrainingSetup, batch_size: int, precision: str, train: bool = True, steps: int = 1) -> StepMeasurement:
    """Return the peak CUDA memory of ``steps`` steps at ``batch_size`` (None when out of memory).

    The time is that of the last step, so ``steps=2`` leaves cuDNN autotuning out of throughput figures.
    Memory is released before returning either way, so one trial leaves nothing behind for the next.
    """
    device = device_of(setup.net)
    if device.type != "cuda":
        raise MedsegError(f"measuring memory needs a CUDA device, the model is on {device}: use the CPU estimator")

    def timed_steps() -> tuple[int, float | None]:
        torch.cuda.reset_peak_memory_stats(device)
        seconds = 0.0
        for _ in range(steps):
            torch.cuda.synchronize(device)
            start = time.perf_counter()
            run_training_step(setup, batch_size, precision, train)
            torch.cuda.synchronize(device)
            seconds = time.perf_counter() - start
        return torch.cuda.max_memory_allocated(device), seconds

    return run_trial(timed_steps, batch_size, precision)


def run_trial(step: Callable[[], tuple[int, float | None]], batch_size: int, precision: str) -> StepMeasurement:
    """Return the measurement of ``step`` (which gives peak bytes and seconds), or a failed one if it ran out of memory.

    A step that returns has freed its tensors by reference counting. One that ran out of memory leaves them
    pinned by reference cycles through its traceback's frames, so those are collected and the CUDA cache
    emptied before the next trial.
    """
    try:
        peak, seconds = step()
        return StepMeasurement(batch_size, precision, peak, seconds)
    except RuntimeError as error:
        if not is_out_of_memory(error):
            raise
    # reached only after an OOM, outside the except block, where `error` no longer pins the traceback
    garbage_collection_cuda()
    return StepMeasurement(batch_size, precision, None)


def check_budget_fraction(fraction: float) -> float:
    """Return ``fraction`` if it is a usable share of memory, else raise a one-line error."""
    if not 0 < fraction <= 1:
        raise MedsegError(f"memory budget fraction must be in (0, 1], got {fraction}")
    return fraction


def cuda_budget_bytes(device: torch.device, fraction: float) -> int:
    """Return ``fraction`` of the memory this process can use now: free memory plus torch's own cache."""
    garbage_collection_cuda()
    free, _ = torch.cuda.mem_get_info(device)
    return int(fraction * (free + torch.cuda.memory_reserved(device)))
