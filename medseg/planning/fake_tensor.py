"""Step cost for a GPU that is not here: a training step's peak memory on fake tensors, tracked allocations.

Under PyTorch's ``FakeTensorMode`` every tensor has a shape, dtype and device but no data, so a step of a
large network at a large patch costs about a second whatever its size. ``MemTracker`` sees every
allocation and free of the step (forward under the precision's autocast, loss, backward, training's AdamW step) and
keeps the peak of the live bytes: weights, gradients, optimizer state, batch, activations and backward's
temporaries. Peaks are counted at tensor storage sizes (CUDA's 512-byte rounding included), not
allocator caching.

MONAI's DiceCE loss cannot run on fake tensors (it turns a tensor into a Python list, which needs data),
so the estimate runs ``dice_ce_footprint`` in its place: the same softmax, one-hot target, products, sums
and cross-entropy on tensors of the same shapes and dtypes, hence the same memory (inside MONAI's deep-supervision
loss, once per head, as training runs it). The GradScaler's
scaling (one scalar) is left out.
"""

from __future__ import annotations

import json
from dataclasses import asdict

import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.distributed._tools.mem_tracker import MemTracker

from medseg.errors import MedsegError
from medseg.model.loss import segmentation_loss
from medseg.model.networks import network_for
from medseg.planning.step import StepCost, StepMeasurement, training_optimizer
from medseg.precision import autocast
from medseg.recipe import Recipe


def dice_ce_footprint(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Return Dice + cross-entropy computed as MONAI's ``DiceCELoss(to_onehot_y=True, softmax=True)`` does, tensor for tensor."""
    classes = label.long()
    target = torch.zeros_like(logits, dtype=torch.float32).scatter_(1, classes, 1.0)
    probabilities = torch.softmax(logits.float(), dim=1)
    spatial = tuple(range(2, logits.ndim))
    intersection = torch.sum(target * probabilities, dim=spatial)
    denominator = torch.sum(target, dim=spatial) + torch.sum(probabilities, dim=spatial)
    dice = 1.0 - (2.0 * intersection + 1e-5) / (denominator + 1e-5)
    return dice.mean() + F.cross_entropy(logits, classes[:, 0])


def fake_step(recipe: Recipe, batch_size: int, precision: str) -> StepMeasurement:
    """Return the steady-state peak bytes of a training step of the recipe's network at ``batch_size``, computed on
    fake tensors: the step runs as training's second and later ones do (Lightning's order), with AdamW's state made
    and the previous step's gradients alive during the forward pass.

    Fake tensors and ``MemTracker`` are private PyTorch API, tested with the pinned torch only. A torch that cannot run
    the step (13 planning tests failed so on an H200 with torch 2.11; not reproduced on a CPU with 2.11 or 2.13) ends
    in one line naming that torch, the step and the way out; the original error is chained for a traceback.
    """
    try:
        return StepMeasurement(batch_size, precision, _fake_peak_bytes(recipe, batch_size, precision))
    except MedsegError:
        raise
    except Exception as error:
        reason = (str(error).strip().splitlines() or [""])[0]
        raise MedsegError(
            f"the fake-tensor memory estimate failed at {precision}, batch {batch_size}, patch {list(recipe.patch_size)} under torch "
            f"{torch.__version__} ({type(error).__name__}: {reason}): install the tested torch==2.13.0, or on a CUDA GPU leave "
            "--capacity_gib out to measure real steps instead"
        ) from error


def _fake_peak_bytes(recipe: Recipe, batch_size: int, precision: str) -> int:
    """Return MemTracker's peak of the step's live bytes on fake CPU tensors."""
    with FakeTensorMode():
        net = network_for(recipe).train()
        optimizer = training_optimizer(net.parameters(), recipe.optimizer)
        loss_fn = segmentation_loss(recipe.network_kwargs, dice_ce_footprint)  # every deep-supervision head, as training
        for parameter in net.parameters():  # the previous step: its gradients, and the optimizer state it made
            parameter.grad = torch.zeros_like(parameter)
        optimizer.step()
        image = torch.empty(batch_size, recipe.in_channels, *recipe.patch_size)
        label = torch.empty(batch_size, 1, *recipe.patch_size)  # float class indices, as the data module delivers them
        tracker = MemTracker()
        tracker.track_external(net, optimizer, image, label)
        with tracker:
            with autocast(precision, "cpu"):
                loss = loss_fn(net(image), label)
            optimizer.zero_grad(set_to_none=True)  # after the forward pass, as Lightning releases them
            loss.backward()
            optimizer.step()
        return int(tracker.get_tracker_snapshot("peak")[torch.device("cpu")]["Total"])


_estimates: dict[str, StepMeasurement] = {}


def fake_tensor_step_cost(recipe: Recipe, precision: str) -> StepCost:
    """Return the step cost of the recipe's network at ``precision`` on fake tensors (no time: nothing ran); peaks are
    remembered, so plans for several budgets share them."""

    def cost(batch_size: int) -> StepMeasurement:
        key = json.dumps([
            recipe.network, recipe.network_kwargs, recipe.in_channels, recipe.out_channels, recipe.patch_size, batch_size,
            precision, asdict(recipe.optimizer),
        ])
        if key not in _estimates:
            _estimates[key] = fake_step(recipe, batch_size, precision)
        return _estimates[key]

    return cost
