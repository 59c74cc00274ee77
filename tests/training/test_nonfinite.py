"""NaN/Inf losses: updates skipped on the device, a stop after too many in a row, and no host sync inside the step."""

from __future__ import annotations

import contextlib
import os
import sys

import pytest
import torch
from lightning.pytorch.plugins.precision import MixedPrecision

from medseg.training.nonfinite import NonfiniteLossCounter
from medseg.training.speed import SpeedSettings
from tests.helpers.stand_ins import RandomPatches

READ_BACKS = ("item", "__bool__", "__float__", "__int__", "tolist")


@contextlib.contextmanager
def no_read_backs():
    """Make medseg's and Lightning's reading of a tensor's value back to Python raise: on a GPU that waits for it.

    Only those callers: MONAI's losses read host-made index tensors (``torch.arange(...).tolist()``), which stay
    on the host on a GPU too; the CUDA test below checks everything.
    """
    saved = {name: getattr(torch.Tensor, name) for name in READ_BACKS}

    def refusing(name):
        def read_back(self, *args, **kwargs):
            caller = sys._getframe(1).f_code.co_filename
            if f"{os.sep}medseg{os.sep}" in caller or f"{os.sep}lightning{os.sep}" in caller:
                raise AssertionError(f"{caller} read a tensor back to the host ({name}) inside the training step")
            return saved[name](self, *args, **kwargs)

        return read_back

    for name in READ_BACKS:
        setattr(torch.Tensor, name, refusing(name))
    try:
        yield
    finally:
        for name, method in saved.items():
            setattr(torch.Tensor, name, method)


def guarded(method, guard):
    def run(*args, **kwargs):
        with guard():
            return method(*args, **kwargs)

    return run


def test_training_step_and_update_read_nothing_back_from_the_device(tiny_module, make_trainer, monkeypatch):
    monkeypatch.setattr(tiny_module, "training_step", guarded(tiny_module.training_step, no_read_backs))
    monkeypatch.setattr(tiny_module, "on_before_optimizer_step", guarded(tiny_module.on_before_optimizer_step, no_read_backs))
    make_trainer(max_steps=2).fit(tiny_module, datamodule=RandomPatches(batch_size=2))


@contextlib.contextmanager
def sync_is_an_error(module=None):
    """Make any host-device synchronisation raise (from the second training step on, when a module is given)."""
    if module is not None and module.trainer.global_step == 0:
        yield
        return
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.cuda
def test_cuda_training_steps_run_without_host_device_sync(tiny_module, make_trainer, monkeypatch):
    monkeypatch.setattr(tiny_module, "training_step", guarded(tiny_module.training_step, sync_is_an_error))
    monkeypatch.setattr(tiny_module, "on_before_optimizer_step", guarded(tiny_module.on_before_optimizer_step, sync_is_an_error))
    make_trainer(accelerator="gpu", max_steps=3, precision="16-mixed").fit(tiny_module, datamodule=RandomPatches(batch_size=2))


@pytest.mark.cuda
def test_cuda_compiled_training_steps_run_without_host_device_sync(tiny_module, make_trainer, monkeypatch):
    # speed.compile's default on a GPU: the first step compiles; the steps after it must not wait for the device
    after_the_first = lambda: sync_is_an_error(tiny_module)  # noqa: E731
    monkeypatch.setattr(tiny_module, "training_step", guarded(tiny_module.training_step, after_the_first))
    monkeypatch.setattr(tiny_module, "on_before_optimizer_step", guarded(tiny_module.on_before_optimizer_step, after_the_first))
    trainer = make_trainer(accelerator="gpu", max_steps=3, precision="16-mixed", callbacks=[SpeedSettings()])
    trainer.fit(tiny_module, datamodule=RandomPatches(batch_size=2))
    assert tiny_module.net._compiled_call_impl is not None


def fp16_with_gradient_scaler() -> MixedPrecision:
    """fp16 autocast with its gradient scaler, as 16-mixed runs on a GPU (Lightning turns 16-mixed into bf16 on a CPU)."""
    return MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))


# under fp16 the gradient scaler, not medseg, finds the NaN gradients and has the update skipped
@pytest.mark.parametrize("plugins", [[], [fp16_with_gradient_scaler()]], ids=["32-true", "16-mixed with scaler"])
def test_nonfinite_step_leaves_weights_and_optimizer_state_unchanged(tiny_module, make_trainer, plugins):
    data = RandomPatches(batch_size=2, num_samples=2)
    for sample in data.samples:
        sample["image"][0, 0, 0, 0] = float("nan")
    before = {k: v.clone() for k, v in tiny_module.state_dict().items() if "running" not in k}
    trainer = make_trainer(max_steps=1, plugins=plugins)
    trainer.fit(tiny_module, datamodule=data)
    for name, value in before.items():
        torch.testing.assert_close(tiny_module.state_dict()[name], value, msg=name)
    assert all(float(state["step"]) == 0 for state in trainer.optimizers[0].state.values())


def test_counter_stops_at_the_limit_of_nonfinite_losses_in_a_row():
    counter = NonfiniteLossCounter(limit=2)
    nan, finite = torch.tensor(float("nan")), torch.tensor(1.0)
    assert counter.count(nan, step=0, cases=["a"]) is None
    assert counter.count(finite, step=1, cases=["b"]) is None  # a finite loss resets the count
    assert counter.count(nan, step=2, cases=["c"]) is None
    message = counter.count(torch.tensor(float("inf")), step=3, cases=["d", "e"])
    assert message.startswith("training stopped: loss was NaN/Inf for 2 steps in a row (global step 3, cases d, e)")
