"""LightningModule: a MONAI network trained with Dice + cross-entropy, validated by sliding windows on whole volumes."""

from __future__ import annotations

import logging
import random
from dataclasses import asdict
from typing import Any

import lightning as L
import numpy as np
import torch
from monai.metrics import DiceMetric
from monai.networks.utils import one_hot

from medseg.data.sampling import DEFAULT_PATCH_SIZE
from medseg.data.transforms import Preprocessing
from medseg.errors import MedsegError
from medseg.model.inferer import window_inferer
from medseg.model.loss import segmentation_loss
from medseg.model.networks import DEFAULT_NETWORK_KWARGS, network_for, network_kwargs_or_default
from medseg.planning.step import training_optimizer
from medseg.recipe import OptimizerSettings, Recipe, Window
from medseg.training.batch_planner import planner_of
from medseg.training.nonfinite import NonfiniteLossCounter, nonfinite_gradients
from medseg.training.running_loss import RunningLoss

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_NETWORK_KWARGS", "SegmentationModule"]  # the benchmarks read the default UNet here


class SegmentationModule(L.LightningModule):
    """3D segmentation network plus loss, metric and optimiser; every checkpoint carries its recipe.

    ``recipe`` is what training decided. Until a fit starts it is the configured one (``configured_recipe``, from these
    arguments); each fit settles it once, at its start (``on_fit_start``), and nothing changes it afterwards. Validation
    reads it, and it is written into every checkpoint as ``checkpoint["medseg"]`` for inference to read; the saved
    hyper-parameters stay as configured.

    Args:
        network: MONAI network name ("UNet", "DynUNet", "SegResNet").
        network_kwargs: the network class's own arguments (for UNet: channels, strides, num_res_units, ...).
        in_channels, out_channels: image channels and classes incl. background (linked from the data module).
        class_names, channel_names: names by label value / channel index (linked from the data module).
        preprocessing: ``Preprocessing.to_dict()`` of the data module, so inference needs no config.
        patch_size: training patch, also the sliding-window size for validation and inference.
        window: sliding windows for validation and (through the recipe) inference: overlap, Gaussian blending and windows
            per forward pass (on a GPU the batch planner's size replaces the last).
        optimizer: the optimizer (AdamW, or nnU-Net's SGD) and its settings; the rate decays polynomially (power 0.9) to zero.
        max_nonfinite_steps: stop training when the loss is NaN/Inf this many steps in a row (single
            non-finite steps are skipped, as the fp16 gradient scaler does for overflowing gradients).
    """

    def __init__(
        self,
        network: str = "UNet",
        network_kwargs: dict[str, Any] | None = None,
        in_channels: int = 1,
        out_channels: int = 3,
        class_names: list[str] | None = None,
        channel_names: list[str] | None = None,
        preprocessing: dict[str, Any] | None = None,
        patch_size: tuple[int, int, int] = DEFAULT_PATCH_SIZE,
        window: Window = Window(),
        optimizer: OptimizerSettings = OptimizerSettings(),
        max_nonfinite_steps: int = 20,
    ) -> None:
        super().__init__()
        # a module rebuilt from its saved hyper-parameters gets the records as the plain data they are saved as
        window = window if isinstance(window, Window) else Window(**window)
        optimizer = optimizer if isinstance(optimizer, OptimizerSettings) else OptimizerSettings(**optimizer)
        network_kwargs = network_kwargs_or_default(network, network_kwargs)
        class_names = list(class_names or [f"class_{i}" for i in range(out_channels)])
        channel_names = list(channel_names or [f"channel_{i}" for i in range(in_channels)])
        self.save_hyperparameters(
            {
                "network": network,
                "network_kwargs": network_kwargs,
                "in_channels": in_channels,
                "out_channels": out_channels,
                "class_names": class_names,
                "channel_names": channel_names,
                "preprocessing": dict(preprocessing or {}),
                "patch_size": list(patch_size),
                "window": asdict(window),  # plain data: checkpoints load weights-only
                "optimizer": asdict(optimizer),
                "max_nonfinite_steps": max_nonfinite_steps,
            }
        )
        if len(class_names) != out_channels or len(channel_names) != in_channels:
            raise MedsegError(f"{len(class_names)} class names for {out_channels} classes, or {len(channel_names)} channel names for {in_channels} channels")
        self.configured_recipe = Recipe(
            network=network,
            network_kwargs=network_kwargs,
            channel_names=tuple(channel_names),
            class_names=tuple(class_names),
            patch_size=tuple(int(v) for v in patch_size),
            preprocessing=Preprocessing.from_dict(preprocessing) if preprocessing else Preprocessing(),
            window=window,
            optimizer=optimizer,
        )
        self.recipe = self.configured_recipe
        # windows per forward pass stay at or below this: OOM recovery's smaller size after a validation OOM
        self.max_window_batch_size: int | None = None
        self.net = network_for(self.recipe)
        self.loss_fn = segmentation_loss(network_kwargs)  # with a DynUNet's deep supervision: every head
        self.dice = DiceMetric(include_background=False, reduction="mean_batch")
        self.nonfinite_losses = NonfiniteLossCounter(max_nonfinite_steps)
        self.running_loss = RunningLoss(every=1)  # at fit start: every trainer.log_every_n_steps

    def on_fit_start(self) -> None:
        """Settle the recipe, the one place it is made: the configured one plus what was decided before this fit. That is
        the precision that runs (the CLI resolved "16-mixed" for this machine), the batch, accumulation and window batch
        (the batch planner's, in its ``setup``), and OOM recovery's smaller window batch. A recovery refits, and each fit
        settles again from the configured recipe."""
        planner = planner_of(self.trainer)
        window_batch = (planner.window_batch_size if planner is not None else None) or self.configured_recipe.window.batch_size
        if self.max_window_batch_size is not None:
            window_batch = min(window_batch, self.max_window_batch_size)
        self.recipe = self.configured_recipe.with_changes(
            precision=str(self.trainer.precision),
            batch_size=getattr(self.trainer.datamodule, "batch_size", None),
            accumulate_grad_batches=self.trainer.accumulate_grad_batches,
            window={"batch_size": window_batch},
        )
        self.running_loss = RunningLoss(every=max(1, self.trainer.log_every_n_steps))

    @property
    def optimizer_settings(self) -> OptimizerSettings:
        """The optimizer training steps with: the recipe's."""
        return self.recipe.optimizer

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.net(image)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        # In train mode a deep-supervised DynUNet returns every head, and the loss weighs them (nnU-Net's weights).
        # Nothing here waits for the device: a NaN/Inf step is counted on it and its update skipped there
        # (on_before_optimizer_step); the count is read back without blocking, so the stop may come a step late.
        image, label = batch["image"], batch["label"]
        loss = self.loss_fn(self.net(image), label)
        stop = self.nonfinite_losses.count(loss, self.global_step, batch.get("name", ()))
        if stop:
            raise MedsegError(stop)
        # The mean of the last log_every_n_steps steps, a CPU tensor copied from the device without blocking: the bar's
        # "loss" and the logger's train_loss_step. Logged once per window, as Lightning's self.log costs host time that
        # a fast GPU step does not have (benchmarks/results/loop_overhead/loop_overhead_cpu.md); the logger writes it at its next step.
        shown = self.running_loss.add(loss)
        if shown is not None:
            self.log("loss", shown, prog_bar=True, logger=False, on_step=True, on_epoch=False, batch_size=image.shape[0])
            self.log("train_loss_step", shown, on_step=True, on_epoch=False, batch_size=image.shape[0])
        return loss

    def on_train_epoch_end(self) -> None:
        mean = self.running_loss.epoch_mean()
        if mean is not None:
            self.log("train_loss_epoch", mean, on_step=False, on_epoch=True)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Skip the update on the device when a gradient is NaN/Inf: fused AdamW reads ``found_inf``. Under fp16 the
        gradient scaler checks the gradients itself and sets ``found_inf`` over this one, so it is not computed there."""
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        if scaler is None or not scaler.is_enabled():
            optimizer.found_inf = nonfinite_gradients(self.parameters())

    def predict_logits(self, image: torch.Tensor) -> torch.Tensor:
        """Return logits for whole volumes (B, C, X, Y, Z), stitched where ``image`` is, with the recipe's sliding
        windows run on the model's device, as inference runs them."""
        return window_inferer(self.recipe, window_device=self.device)(image, self.net)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        logits = self.predict_logits(batch["image"])
        num_classes = self.recipe.out_channels
        prediction = one_hot(logits.argmax(dim=1, keepdim=True), num_classes)
        self.dice(prediction, one_hot(batch["label"].long(), num_classes))

    def on_validation_epoch_end(self) -> None:
        per_class = torch.nanmean(self._all_case_scores(), dim=0)  # a class absent from a case is NaN there
        self.dice.reset()
        for name, value in zip(self.recipe.class_names[1:], per_class):
            self.log(f"val_dice_{name}", value, sync_dist=True)
        self.log("val_mean_dice", torch.nanmean(per_class), prog_bar=True, sync_dist=True)

    def _all_case_scores(self) -> torch.Tensor:
        """Return the Dice of every validation case (cases x foreground classes), gathered from all ranks.

        Ranks hold different numbers of cases (no padding duplicates), so the scores are padded to gather them.
        """
        classes = self.recipe.out_channels - 1
        buffer = self.dice.get_buffer()
        local = buffer if isinstance(buffer, torch.Tensor) and buffer.numel() else torch.zeros(0, classes, device=self.device)
        if self.trainer.world_size == 1:
            return local
        counts = self.all_gather(torch.tensor(len(local), device=self.device))
        padded = torch.full((int(counts.max()), classes), float("nan"), device=self.device)
        padded[: len(local)] = local
        gathered = self.all_gather(padded)
        return torch.cat([gathered[rank, : int(count)] for rank, count in enumerate(counts)])

    def configure_optimizers(self) -> dict[str, Any]:
        # the batch and accumulation are decided before this (the batch planner's setup), and a resumed or recovered
        # fit builds it again: the decay always spans the steps this fit takes; only the step count is restored
        optimizer = training_optimizer(self.parameters(), self.recipe.optimizer)
        scheduler = polynomial_decay(optimizer, max(int(self.trainer.estimated_stepping_batches), 1))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store the recipe as plain data, readable with ``torch.load(weights_only=True)``: what inference reads."""
        checkpoint["medseg"] = self.recipe.to_dict()
        checkpoint["rng_states"] = rng_states()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Resume the random streams too, so dropout and other model-side randomness continue as if never stopped."""
        if "rng_states" in checkpoint:
            set_rng_states(checkpoint["rng_states"])
        for state in checkpoint.get("lr_schedulers", []):
            # a checkpoint of the PolynomialLR schedule medseg used before: its step count carries over the same way
            state.setdefault("lr_lambdas", [None] * len(state.get("base_lrs", [None])))


def polynomial_decay(optimizer: torch.optim.Optimizer, total_steps: int, power: float = 0.9) -> torch.optim.lr_scheduler.LambdaLR:
    """Return the schedule that decays the rate polynomially to zero over ``total_steps`` (nnU-Net's poly rule).

    The factor is computed from the step alone, so a checkpoint restores only the step count, never the length."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.0, 1.0 - step / total_steps) ** power)


def rng_states() -> dict[str, Any]:
    """Return torch, CUDA, numpy and Python random states as tensors and plain lists (weights-only loadable)."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    version, state, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [kind, keys.tolist(), position, has_gauss, cached],
        "python": [version, list(state), gauss],
    }


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore what ``rng_states`` returned."""
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        set_cuda_rng_states(states["cuda"])
    kind, keys, position, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), position, has_gauss, cached))
    version, state, gauss = states["python"]
    random.setstate((version, tuple(state), gauss))


def set_cuda_rng_states(states: list[torch.Tensor]) -> None:
    """Restore per-GPU random states on the GPUs this machine has; a checkpoint from a machine with more GPUs
    has states for GPUs that are not here (``set_rng_state_all`` raises IndexError then), and those are left out."""
    count = torch.cuda.device_count()
    for index, state in enumerate(states[:count]):
        torch.cuda.set_rng_state(state, index)
    if len(states) > count:
        log.warning("the checkpoint has random states of %d GPUs, this machine %d: restored those of GPUs 0-%d only", len(states), count, count - 1)
