"""Speed settings for the network in training: options, each left off until a GPU benchmark shows it wins there."""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback


class SpeedSettings(Callback):
    """Applies the chosen speed settings to the network before training starts.

    cuDNN autotuning is the Trainer's own ``benchmark`` (on by default in medseg: training patches have one shape);
    non-blocking copies of pinned batches and fused AdamW are always on. These two vary with network, GPU and
    precision, so they are options (``benchmarks/training_benchmark.py --option speed.channels_last=true`` measures them):

    Args:
        channels_last: keep the network's weights in ``torch.channels_last_3d`` order; convolutions then run
            channels-last (NDHWC) kernels, which tensor cores prefer under mixed precision.
        compile: ``torch.compile`` the network in place (``nn.Module.compile``, so checkpoints keep their keys);
            the first steps, and each new validation window batch, pay the compilation.
    """

    def __init__(self, channels_last: bool = False, compile: bool = False) -> None:
        self.channels_last = channels_last
        self.compile = compile

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        network = pl_module.net
        if self.channels_last:
            network.to(memory_format=torch.channels_last_3d)
        if self.compile:
            network.compile()
