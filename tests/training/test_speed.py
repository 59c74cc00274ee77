"""SpeedSettings: the chosen settings reach the network before training; a compiled network trains, validates and saves."""

from types import SimpleNamespace

import pytest
import torch

from medseg.model.networks import network_for
from medseg.training import speed
from medseg.training.speed import CPU_COMPILE_MIN_STEPS, SpeedSettings
from tests.helpers.stand_ins import RandomPatches, WithValidation


def test_channels_last_puts_convolution_weights_in_channels_last_order(tiny_module, make_trainer):
    make_trainer(max_steps=1, callbacks=[SpeedSettings(channels_last=True)]).fit(tiny_module, datamodule=RandomPatches(batch_size=2))
    convolutions = [m.weight for m in tiny_module.net.modules() if isinstance(m, torch.nn.Conv3d)]
    assert convolutions and all(w.is_contiguous(memory_format=torch.channels_last_3d) for w in convolutions)


@pytest.mark.parametrize(
    ("device", "steps", "channels_last", "compiled"),
    [("cuda", 10, False, True), ("cpu", CPU_COMPILE_MIN_STEPS - 1, True, False), ("cpu", CPU_COMPILE_MIN_STEPS, True, True)],
)
def test_auto_runs_channels_last_on_a_cpu_and_compiles_on_a_gpu_and_for_long_cpu_runs(tiny_module, monkeypatch, device, steps, channels_last, compiled):
    monkeypatch.setattr(speed, "cpu_compiler_available", lambda: True)
    # nn.Module.compile compiles at the first call, so no GPU is needed to see the choice
    trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device(device)), estimated_stepping_batches=steps, optimizers=[])
    SpeedSettings().setup(trainer, tiny_module, "fit")
    SpeedSettings().on_train_start(trainer, tiny_module)
    convolutions = [m.weight for m in tiny_module.net.modules() if isinstance(m, torch.nn.Conv3d)]
    assert all(w.is_contiguous(memory_format=torch.channels_last_3d) for w in convolutions) == channels_last
    assert (tiny_module.net._compiled_call_impl is not None) == compiled


def test_a_long_cpu_run_stays_uncompiled_without_a_cpp_compiler(monkeypatch):
    monkeypatch.setattr(speed, "cpu_compiler_available", lambda: False)
    assert SpeedSettings().resolved("cpu", steps=10 * CPU_COMPILE_MIN_STEPS) == (True, False)


def test_explicit_choices_override_auto_on_every_device():
    assert SpeedSettings(channels_last=False, compile=True).resolved("cpu") == (False, True)
    assert SpeedSettings(channels_last=True, compile=False).resolved("cuda") == (True, False)


def test_a_compiled_network_trains_validates_and_saves_the_keys_inference_loads(tiny_module, make_trainer):
    trainer = make_trainer(max_steps=2, limit_val_batches=1, val_check_interval=2, callbacks=[SpeedSettings(compile=True)])
    trainer.fit(tiny_module, datamodule=WithValidation(batch_size=2, num_samples=4))
    assert tiny_module.net._compiled_call_impl is not None
    assert torch.isfinite(trainer.callback_metrics["val_mean_dice"])
    network = network_for(tiny_module.recipe)
    network.load_state_dict({k.removeprefix("net."): v for k, v in tiny_module.state_dict().items() if k.startswith("net.")})


def adamw_steps(weight: torch.Tensor, gradient: torch.Tensor, layout: torch.memory_format, state_layout: torch.memory_format, align: bool) -> torch.Tensor:
    """Return the weight after two fused AdamW steps, the state's layout changed in between as a resumed run's may be."""
    parameter = torch.nn.Parameter(weight.clone().to(memory_format=layout))
    optimizer = torch.optim.AdamW([parameter], lr=0.1, fused=True)
    for step in range(2):
        if step:
            state = optimizer.state[parameter]
            state["exp_avg"], state["exp_avg_sq"] = (state[k].to(memory_format=state_layout) for k in ("exp_avg", "exp_avg_sq"))
            if align:
                trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("cpu")), estimated_stepping_batches=1, optimizers=[optimizer])
                SpeedSettings(channels_last=False, compile=False).on_train_start(trainer, None)
        parameter.grad = gradient.clone().to(memory_format=layout)
        optimizer.step()
    return parameter.detach().contiguous()


@pytest.mark.parametrize(("layout", "state_layout"), [(torch.channels_last_3d, torch.contiguous_format), (torch.contiguous_format, torch.channels_last_3d)])
def test_a_resumed_optimizer_state_in_another_layout_updates_as_an_unbroken_run(layout, state_layout):
    generator = torch.Generator().manual_seed(0)
    weight, gradient = torch.randn(8, 4, 3, 3, 3, generator=generator), torch.randn(8, 4, 3, 3, 3, generator=generator)
    unbroken = adamw_steps(weight, gradient, layout, layout, align=False)
    assert not torch.allclose(adamw_steps(weight, gradient, layout, state_layout, align=False), unbroken)  # what the alignment prevents
    torch.testing.assert_close(adamw_steps(weight, gradient, layout, state_layout, align=True), unbroken)
