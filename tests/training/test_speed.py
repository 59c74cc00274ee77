"""SpeedSettings: the chosen settings reach the network before training."""

import torch

from medseg.training.speed import SpeedSettings
from tests.memory.fakes import RandomPatches


def test_channels_last_puts_convolution_weights_in_channels_last_order(tiny_module, make_trainer):
    make_trainer(max_steps=1, callbacks=[SpeedSettings(channels_last=True)]).fit(tiny_module, datamodule=RandomPatches(batch_size=2))
    convolutions = [m.weight for m in tiny_module.net.modules() if isinstance(m, torch.nn.Conv3d)]
    assert convolutions and all(w.is_contiguous(memory_format=torch.channels_last_3d) for w in convolutions)
