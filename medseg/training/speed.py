"""Speed settings for the network in training: each the default only where a GPU benchmark showed it wins."""

from __future__ import annotations

import logging
from typing import Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

log = logging.getLogger(__name__)


class SpeedSettings(Callback):
    """Applies the chosen speed settings to the network before training starts.

    cuDNN autotuning is the Trainer's own ``benchmark`` (on by default in medseg: training patches have one shape);
    non-blocking copies of pinned batches and fused AdamW are always on. These two vary with network, device and
    precision (``benchmarks/gpu_precision_benchmark.py --variants`` and ``benchmarks/training_benchmark.py --option
    speed.compile=true`` measure them):

    Args:
        channels_last: keep the network's weights in ``torch.channels_last_3d`` order; convolutions then run
            channels-last (NDHWC) kernels. On an H200 fp16 steps ran 1.27x faster at batch 2, TF32 ones 1.03x; not
            measured together with compile, so an option.
        compile: ``torch.compile`` the network in place (``nn.Module.compile``, so checkpoints keep their keys).
            "auto" compiles on a CUDA GPU: on an H200 the spleen UNet's training step ran 2.4x faster in fp16 and
            2.0x in TF32, and the whole fit loop 1.18x (benchmarks/results/precision_cuda_compile.md,
            training_cuda_spleen_compile.md), for about 40 s of compiling; on a CPU it stays off, where compiling
            takes minutes for a gain not measured. The first steps, and each new validation window batch, compile.
    """

    def __init__(self, channels_last: bool = False, compile: bool | Literal["auto"] = "auto") -> None:
        self.channels_last = channels_last
        self.compile = compile

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.channels_last:
            apply_speed_settings(pl_module.net, channels_last=True, compile=False)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # after every on_fit_start: the batch planner's trial steps run the network uncompiled
        device_type = trainer.strategy.root_device.type
        compile = device_type == "cuda" if self.compile == "auto" else bool(self.compile)
        if self.compile == "auto":
            log.info("speed.compile auto: %s", "torch.compile of the network (a CUDA GPU)" if compile else f"not compiled on {device_type}")
        if compile:
            apply_speed_settings(pl_module.net, channels_last=False, compile=True)


def apply_speed_settings(network: torch.nn.Module, channels_last: bool, compile: bool) -> None:
    """Apply the settings to the network in place, as training does (the GPU precision benchmark measures them)."""
    if channels_last:
        network.to(memory_format=torch.channels_last_3d)
    if compile:
        network.compile()
