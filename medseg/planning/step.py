"""The training step every step cost runs, with the optimizer training uses, and what one trial of it cost.

The step is the same for every backend (real CUDA steps, fake tensors, the simulated device) so that what is
measured is what training runs: forward and loss under the precision's autocast, backward (through a
GradScaler for fp16), optimizer step and zero_grad.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

import torch
from torch import nn

from medseg.planning.oom import is_out_of_memory, release_memory
from medseg.model.loss import segmentation_loss
from medseg.model.networks import network_for
from medseg.precision import autocast
from medseg.recipe import OptimizerSettings, Recipe

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]


def training_optimizer(parameters: Iterable[nn.Parameter], settings: OptimizerSettings = OptimizerSettings()) -> torch.optim.Optimizer:
    """Return the optimizer training steps with, which trials and estimates therefore step with too: fused AdamW, or
    fused SGD (nnU-Net's) when ``settings.name`` is "sgd".

    Fused: one kernel per step, and it honours ``found_inf`` (skipped NaN/Inf updates) without a host sync. Its
    state's size does not depend on the rate or the decay, so a trial's optimizer counts what training's holds.
    SGD's momentum buffers are made here, zero, rather than at its first step: fused SGD makes them with
    ``torch.empty_like`` at that step and leaves them unwritten when the step is skipped (an fp16 overflow, a NaN),
    so the next step would start from whatever memory held (torch 2.13). From zero, the first step's buffer is the
    gradient, as SGD's own first step makes it.
    """
    if settings.name == "adamw":
        return torch.optim.AdamW(parameters, lr=settings.learning_rate, weight_decay=settings.weight_decay, fused=True)
    optimizer = torch.optim.SGD(
        parameters, lr=settings.learning_rate, momentum=settings.momentum, nesterov=settings.nesterov,
        weight_decay=settings.weight_decay, fused=True,
    )
    if settings.momentum:
        for group in optimizer.param_groups:
            for parameter in group["params"]:
                optimizer.state[parameter]["momentum_buffer"] = torch.zeros_like(parameter, memory_format=torch.preserve_format)
    return optimizer


@dataclass
class TrainingSetup:
    """The model pieces a training step needs, as training uses them.

    Attributes:
        net: the network (its current device is where steps run).
        loss_fn: ``loss_fn(outputs, label)`` with label (B, 1, X, Y, Z) class indices; ``outputs`` are the network's
            train-mode outputs (a deep-supervised DynUNet's list of heads).
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
    """What a trial at ``batch_size`` cost; ``peak_bytes`` is None when it ran out of memory.

    ``peak_bytes`` is the steady state: the peak of the steps after the first, which hold the previous step's
    gradients and the optimizer state as training does from its second step on. ``first_step_peak_bytes`` is the
    first step's peak, where cuDNN autotunes a new shape (None where it was not measured apart).
    """

    batch_size: int
    precision: str
    peak_bytes: int | None
    seconds: float | None = None
    first_step_peak_bytes: int | None = None

    @property
    def fits(self) -> bool:
        """True when the step finished without running out of memory."""
        return self.peak_bytes is not None


StepCost = Callable[[int], StepMeasurement]  # one trial at a batch size, of one model and precision on one backend


def training_setup(recipe: Recipe, net: nn.Module | None = None, make_optimizer: OptimizerFactory | None = None) -> TrainingSetup:
    """Return the trial-step setup of a recipe: its network (``net``, else a new one), training loss (deep supervision
    included: the step runs the network in train mode, all its heads) and optimizer (``make_optimizer``, default
    ``training_optimizer`` with the recipe's settings)."""
    config = {
        "network": recipe.network, "network_kwargs": dict(recipe.network_kwargs), "in_channels": recipe.in_channels,
        "out_channels": recipe.out_channels, **({} if recipe.optimizer == OptimizerSettings() else {"optimizer": asdict(recipe.optimizer)}),
    }
    return TrainingSetup(
        net=net if net is not None else network_for(recipe),
        loss_fn=segmentation_loss(recipe.network_kwargs),
        make_optimizer=make_optimizer or partial(training_optimizer, settings=recipe.optimizer),
        in_channels=recipe.in_channels,
        out_channels=recipe.out_channels,
        patch_size=tuple(recipe.patch_size),
        config=config,
    )


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
    setup: TrainingSetup,
    batch_size: int,
    precision: str,
    train: bool = True,
    batch: dict[str, torch.Tensor] | None = None,
    steps: int = 1,
    after_step: Callable[[], None] | None = None,
) -> None:
    """Run ``steps`` steps at ``batch_size`` with one optimizer: forward+loss under autocast, then backward and optimizer step.

    Steps follow Lightning's order: the previous step's gradients are released after the forward pass, not
    before it. So from the second step on, the forward pass holds them and the optimizer state, as steady-state
    training does (a single step with a fresh optimizer counts neither). With ``train=False`` only forward passes
    run, under no_grad (sliding-window inference sizing). ``batch`` defaults to a random one on the network's
    device; ``after_step`` is called after each step (timing). Every tensor the steps create is local, so it is
    freed when this returns or raises.
    """
    device = device_of(setup.net)
    batch = batch if batch is not None else synthetic_batch(setup, batch_size, device)
    setup.net.train(train)
    if not train:
        with torch.no_grad(), autocast(precision, device.type):
            for _ in range(steps):
                setup.net(batch["image"])
                if after_step is not None:
                    after_step()
        return
    optimizer = setup.make_optimizer(setup.net.parameters())
    # training's scaler starts at 65536, whose first steps may overflow and skip optimizer.step: the trial would
    # then never create the optimizer state it is meant to count. Memory does not depend on the scale.
    scaler = torch.amp.GradScaler(device.type, init_scale=1.0, enabled=precision == "16-mixed")
    try:
        for _ in range(steps):
            with autocast(precision, device.type):
                loss = setup.loss_fn(setup.net(batch["image"]), batch["label"])
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            if after_step is not None:
                after_step()
    finally:
        # set_to_none frees the gradients even when backward ran out of memory half way
        optimizer.zero_grad(set_to_none=True)


@contextmanager
def cudnn_autotuning(enabled: bool) -> Iterator[None]:
    """Turn cuDNN autotuning on while ``enabled`` (training patches, and windows, all have one shape), then back to
    what it was."""
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = before or enabled
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


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


def run_trial(step: Callable[[], tuple[int, float | None, int | None]], batch_size: int, precision: str) -> StepMeasurement:
    """Return the measurement of ``step`` (which gives steady-state peak bytes, seconds and first-step peak bytes),
    or a failed one if it ran out of memory.

    A step that returns has freed its tensors by reference counting. One that ran out of memory leaves them
    pinned by reference cycles through its traceback's frames, so those are collected and the CUDA cache
    emptied before the next trial.
    """
    try:
        peak, seconds, first_step_peak = step()
        return StepMeasurement(batch_size, precision, peak, seconds, first_step_peak)
    except RuntimeError as error:
        if not is_out_of_memory(error):
            raise
    # reached only after an OOM, outside the except block, where `error` no longer pins the traceback
    release_memory()
    return StepMeasurement(batch_size, precision, None)
