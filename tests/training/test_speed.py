"""SpeedSettings: the chosen settings reach the network before training; a compiled network trains, validates and saves."""

from types import SimpleNamespace

import pytest
import torch

from medseg.model.networks import network_for
from medseg.training.speed import SpeedSettings
from tests.helpers.stand_ins import RandomPatches, WithValidation


def test_channels_last_puts_convolution_weights_in_channels_last_order(tiny_module, make_trainer):
    make_trainer(max_steps=1, callbacks=[SpeedSettings(channels_last=True)]).fit(tiny_module, datamodule=RandomPatches(batch_size=2))
    convolutions = [m.weight for m in tiny_module.net.modules() if isinstance(m, torch.nn.Conv3d)]
    assert convolutions and all(w.is_contiguous(memory_format=torch.channels_last_3d) for w in convolutions)


@pytest.mark.parametrize(("device", "compiled"), [("cuda", True), ("cpu", False)])
def test_compile_auto_compiles_the_network_on_a_cuda_gpu_only(tiny_module, device, compiled):
    # nn.Module.compile compiles at the first call, so no GPU is needed to see the choice
    trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device(device)))
    SpeedSettings().on_train_start(trainer, tiny_module)
    assert (tiny_module.net._compiled_call_impl is not None) == compiled


def test_a_compiled_network_trains_validates_and_saves_the_keys_inference_loads(tiny_module, make_trainer):
    trainer = make_trainer(max_steps=2, limit_val_batches=1, val_check_interval=2, callbacks=[SpeedSettings(compile=True)])
    trainer.fit(tiny_module, datamodule=WithValidation(batch_size=2, num_samples=4))
    assert tiny_module.net._compiled_call_impl is not None
    assert torch.isfinite(trainer.callback_metrics["val_mean_dice"])
    network = network_for(tiny_module.recipe)
    network.load_state_dict({k.removeprefix("net."): v for k, v in tiny_module.state_dict().items() if k.startswith("net.")})
