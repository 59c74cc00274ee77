"""The training module: its learning-rate schedule follows the steps training really takes; random states resume on fewer GPUs."""

from __future__ import annotations

import logging

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from medseg.testing import SimulatedDevice, SimulatedOOMCallback
from medseg.training.batch_planner import BatchSearchCallback
from medseg.training.module import polynomial_decay, rng_states, set_rng_states
from medseg.training.recovery import fit_with_oom_recovery
from tests.helpers.stand_ins import MiB, RandomPatches, linear_curve


def steps_until_zero(scheduler) -> int:
    """Return the step at which the schedule's rate reaches zero."""
    return next(step for step in range(10**6) if scheduler.lr_lambdas[0](step) == 0)


class ScheduleLength(L.Callback):
    """Records (the step the rate reaches zero, trainer.estimated_stepping_batches) at the first training batch of every fit."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, int]] = []
        self.first_batch = True

    def on_fit_start(self, trainer, pl_module) -> None:
        self.first_batch = True

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.first_batch:
            self.seen.append((steps_until_zero(trainer.lr_scheduler_configs[0].scheduler), int(trainer.estimated_stepping_batches)))
            self.first_batch = False


def test_schedule_spans_the_steps_of_the_planned_batch_size(tiny_module, make_trainer) -> None:
    device = SimulatedDevice(100 * MiB, linear_curve(10 * MiB, 15 * MiB))  # plans 5: 2 steps per epoch, not 8
    schedule = ScheduleLength()
    data = RandomPatches(batch_size=1, num_samples=10)
    make_trainer(max_epochs=2, callbacks=[BatchSearchCallback(simulated_device=device, size_sliding_window=False), schedule]).fit(tiny_module, datamodule=data)
    assert data.batch_size == 5
    assert schedule.seen == [(4, 4)]


def test_schedule_spans_the_steps_of_the_smaller_batch_after_an_oom_recovery(tiny_module, make_trainer) -> None:
    device = SimulatedDevice(100 * MiB, linear_curve(10 * MiB, 25 * MiB))  # from step 2 on, 4 no longer fits
    schedule = ScheduleLength()
    data = RandomPatches(batch_size=4, num_samples=8)

    def trainer() -> L.Trainer:
        checkpoint = ModelCheckpoint(save_last=True, save_on_train_epoch_end=True)
        return make_trainer(max_epochs=2, callbacks=[checkpoint, SimulatedOOMCallback(device, from_step=2), schedule])

    fit_with_oom_recovery(trainer, tiny_module, data)
    assert data.batch_size == 2
    assert schedule.seen == [(4, 4), (8, 8)]  # 2 epochs of 2 steps, then of 4


def test_schedule_of_a_resumed_run_spans_its_steps_not_the_checkpoint_s(tiny_module, make_trainer, tmp_path) -> None:
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True, save_on_train_epoch_end=True)
    make_trainer(max_epochs=1, callbacks=[checkpoint]).fit(tiny_module, datamodule=RandomPatches(batch_size=4, num_samples=8))
    schedule = ScheduleLength()
    resumed = make_trainer(max_epochs=2, callbacks=[schedule])
    resumed.fit(tiny_module, datamodule=RandomPatches(batch_size=2, num_samples=8), ckpt_path=tmp_path / "last.ckpt")
    assert schedule.seen == [(8, 8)]


def test_resuming_on_fewer_gpus_restores_the_random_states_of_the_gpus_there(monkeypatch, caplog) -> None:
    states = {**rng_states(), "cuda": [torch.tensor([7], dtype=torch.uint8), torch.tensor([8], dtype=torch.uint8)]}  # saved on 2 GPUs
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device="cuda": restored.append((int(state[0]), device)))
    with caplog.at_level(logging.WARNING, logger="medseg.training.module"):
        set_rng_states(states)
    assert restored == [(7, 0)]
    assert "random states of 2 GPUs, this machine 1" in caplog.text


def test_a_checkpoint_of_the_polynomial_schedule_medseg_used_before_resumes_at_its_step(tiny_module) -> None:
    optimizer = torch.optim.AdamW(tiny_module.parameters(), lr=1.0)
    before = torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=10, power=0.9)
    for _ in range(3):
        optimizer.step()
        before.step()
    checkpoint = {"lr_schedulers": [before.state_dict()]}
    tiny_module.on_load_checkpoint(checkpoint)
    resumed = polynomial_decay(torch.optim.AdamW(tiny_module.parameters(), lr=1.0), total_steps=20)
    resumed.load_state_dict(checkpoint["lr_schedulers"][0])
    assert resumed.last_epoch == 3 and resumed.lr_lambdas[0](20) == 0  # its step, and the length of the run that resumes


def test_nnunets_optimizer_is_sgd_with_nesterov_momentum_recorded_in_the_recipe_which_round_trips() -> None:
    from medseg.planning.step import training_optimizer
    from medseg.recipe import NNUNET_OPTIMIZER, Recipe
    from medseg.training.module import SegmentationModule
    from tests.helpers.stand_ins import TINY_UNET

    module = SegmentationModule(network_kwargs=TINY_UNET, optimizer=NNUNET_OPTIMIZER)
    assert module.recipe.optimizer == NNUNET_OPTIMIZER
    assert Recipe.from_dict(module.recipe.to_dict()) == module.recipe
    optimizer = training_optimizer(module.parameters(), module.recipe.optimizer)
    [group] = optimizer.param_groups
    assert isinstance(optimizer, torch.optim.SGD)
    assert (group["lr"], group["momentum"], group["nesterov"], group["weight_decay"]) == (0.01, 0.99, True, 3e-5)


def test_a_skipped_first_sgd_step_leaves_the_weights_and_a_zero_momentum() -> None:
    # fused SGD makes its momentum buffers at its first step uninitialised and leaves them so when that step is skipped
    from medseg.planning.step import training_optimizer
    from medseg.recipe import NNUNET_OPTIMIZER

    weights = torch.nn.Parameter(torch.ones(1000))
    optimizer = training_optimizer([weights], NNUNET_OPTIMIZER)
    weights.grad = torch.full_like(weights, float("nan"))
    optimizer.found_inf = torch.tensor(1.0)  # as on_before_optimizer_step and the fp16 scaler skip a step
    optimizer.step()
    assert torch.equal(weights.detach(), torch.ones(1000)) and not optimizer.state[weights]["momentum_buffer"].any()


def test_a_deep_supervised_network_trains_on_every_head_and_validates_on_the_top_output() -> None:
    from monai.losses import DeepSupervisionLoss

    from medseg.planning import rules
    from medseg.training.module import SegmentationModule

    _, kwargs, _ = rules.dynunet_for_patch((16, 16, 16), (1.0, 1.0, 1.0), residual=False)
    module = SegmentationModule("DynUNet", {**kwargs, "filters": [4, 8, 16]}, patch_size=(16, 16, 16), out_channels=2)
    assert isinstance(module.loss_fn, DeepSupervisionLoss) and module.recipe.network_kwargs["deep_supervision"]
    image = torch.randn(1, 1, 24, 24, 24)
    with torch.no_grad():
        assert module.eval().predict_logits(image).shape == (1, 2, 24, 24, 24)
    assert len(module.train().net(image[..., :16, :16, :16])) == 2
