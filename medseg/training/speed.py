"""Speed settings for the network in training: each "auto" choice is the default only where a benchmark showed it wins."""

from __future__ import annotations

import logging
from functools import cache
from typing import Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

log = logging.getLogger(__name__)

Choice = bool | Literal["auto"]
# torch.compile pays for itself on a CPU only in long runs: compiling took 25-50 s there (5-10 s with inductor's cache
# warm), and a compiled channels-last step ran 1.2-1.4x the eager one (benchmarks/results/gpu_precision/precision_cpu_spleen*.md,
# precision_cpu_demo.md): 0.02 s a step at the demo's patch, repaid after 1,250-2,500 steps; 0.3-1.0 s at 96^3
CPU_COMPILE_MIN_STEPS = 5_000


class SpeedSettings(Callback):
    """Applies the chosen speed settings to the network before training starts.

    cuDNN autotuning is the Trainer's own ``benchmark`` (on by default in medseg: training patches have one shape);
    non-blocking copies of pinned batches and fused AdamW are always on. These two vary with network, device and
    precision (``python -m benchmarks.gpu_precision --variants``, on a GPU or a CPU, measures them):

    Args:
        channels_last: keep the network's weights in ``torch.channels_last_3d`` order; convolutions then run
            channels-last (NDHWC) kernels. "auto" turns it on on a CPU, where oneDNN's channels-last kernels ran the
            spleen UNet's step at 96^3 1.4-1.6x faster and the demo's 1.2x, fp32 and bf16 alike
            (benchmarks/results/gpu_precision/precision_cpu_spleen.md, precision_cpu_demo.md). On a GPU it stays off: on an H200 eager fp16 steps ran 1.27x
            faster at batch 2 and TF32 ones 1.03x, never measured together with compile.
        compile: ``torch.compile`` the network in place (``nn.Module.compile``, so checkpoints keep their keys).
            "auto" compiles on a CUDA GPU: on an H200 the spleen UNet's training step ran 2.4x faster in fp16 and
            2.0x in TF32, and the whole fit loop 1.18x (benchmarks/results/gpu_precision/precision_cuda_compile.md,
            training_cuda_spleen_compile.md), for about 40 s of compiling. On a CPU it compiles runs of at least
            ``CPU_COMPILE_MIN_STEPS`` training steps (spleen_ct.yaml's 75,000; not the demo's 500) where inductor
            finds a C++ compiler. The first steps, and each new validation window batch, compile.
    """

    def __init__(self, channels_last: Choice = "auto", compile: Choice = "auto") -> None:
        self.channels_last = channels_last
        self.compile = compile

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # before the optimizer, DDP's gradient buckets and the batch planner's trial steps: all then see the layout training runs
        channels_last, _ = self.resolved(trainer.strategy.root_device.type)
        if stage == "fit" and channels_last:
            apply_speed_settings(pl_module.net, channels_last=True, compile=False)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # after every on_fit_start: the batch planner's trial steps run the network uncompiled
        device_type, steps = trainer.strategy.root_device.type, trainer.estimated_stepping_batches
        channels_last, compile = self.resolved(device_type, steps)
        log.info("speed on %s, %s training steps: %s weights, %s", device_type, steps, "channels-last" if channels_last else "channels-first",
                 "torch.compile of the network" if compile else "not compiled")
        if compile:
            apply_speed_settings(pl_module.net, channels_last=False, compile=True)
        for optimizer in trainer.optimizers:  # restored from a checkpoint by now
            match_parameter_layouts(optimizer)

    def resolved(self, device_type: str, steps: float = 0) -> tuple[bool, bool]:
        """Return (channels_last, compile) as they apply on a "cpu" or "cuda" device to a run of ``steps`` training steps."""
        return resolved_speed_settings(self.channels_last, self.compile, device_type, steps)


def resolved_speed_settings(channels_last: Choice, compile: Choice, device_type: str, steps: float) -> tuple[bool, bool]:
    """Return (channels_last, compile) with "auto" resolved for a run of ``steps`` training steps on the device:
    channels-last on a CPU; compiled on a CUDA GPU, and on a CPU for runs of ``CPU_COMPILE_MIN_STEPS`` or more."""
    if channels_last == "auto":
        channels_last = device_type == "cpu"
    if compile == "auto":
        compile = device_type == "cuda" or (device_type == "cpu" and steps >= CPU_COMPILE_MIN_STEPS and cpu_compiler_available())
    return bool(channels_last), bool(compile)


@cache
def cpu_compiler_available() -> bool:
    """Return whether torch.compile's CPU backend (inductor) finds the C++ compiler it builds its kernels with."""
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        return bool(get_cpp_compiler())
    except Exception:  # inductor raises its own errors when it finds none
        return False


def match_parameter_layouts(optimizer: torch.optim.Optimizer) -> None:
    """Give each state tensor of the optimizer shaped like its parameter the parameter's memory layout.

    A resumed optimizer's state keeps the layout it was saved in: channels-first from a GPU run or an older one,
    channels-last from a CPU run. Fused AdamW then updates the parameter wrongly, without an error, where the two differ.
    """
    for parameter, state in optimizer.state.items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor) and value.shape == parameter.shape and value.stride() != parameter.stride():
                state[key] = torch.empty_like(parameter, dtype=value.dtype).copy_(value)


def apply_speed_settings(network: torch.nn.Module, channels_last: bool, compile: bool) -> None:
    """Apply the settings to the network in place, as training does (the precision benchmark measures them)."""
    if channels_last:
        network.to(memory_format=torch.channels_last_3d)
    if compile:
        network.compile()
