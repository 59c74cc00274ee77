"""CPU estimate of a training step's peak memory without computing anything: fake tensors, tracked allocations.

Under PyTorch's ``FakeTensorMode`` every tensor has a shape, dtype and device but no data, so a step of a
large network at a large patch costs about a second whatever its size. ``MemTracker`` sees every
allocation and free of the step (forward under the precision's autocast, loss, backward, AdamW step) and
keeps the peak of the live bytes: weights, gradients, optimizer state, batch, activations and backward's
temporaries. Peaks are counted at tensor storage sizes (CUDA's 512-byte rounding included), not
allocator caching.

MONAI's DiceCE loss cannot run on fake tensors (it turns a tensor into a Python list, which needs data),
so the estimate runs ``dice_ce_footprint`` in its place: the same softmax, one-hot target, products, sums
and cross-entropy on tensors of the same shapes and dtypes, hence the same memory. The GradScaler's
scaling (one scalar) is left out.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.distributed._tools.mem_tracker import MemTracker

from medseg.memory.measure import StepMeasurement
from medseg.model.networks import network_for
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
    """Return the peak bytes of one training step of the recipe's network at ``batch_size``, computed on fake tensors."""
    with FakeTensorMode():
        net = network_for(recipe).train()
        optimizer = torch.optim.AdamW(net.parameters(), foreach=True)  # what training uses on a GPU
        image = torch.empty(batch_size, recipe.in_channels, *recipe.patch_size)
        label = torch.empty(batch_size, 1, *recipe.patch_size)  # float class indices, as the data module delivers them
        tracker = MemTracker()
        tracker.track_external(net, optimizer, image, label)
        with tracker:
            with autocast(precision, "cpu"):
                loss = dice_ce_footprint(net(image), label)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        peak = tracker.get_tracker_snapshot("peak")[torch.device("cpu")]["Total"]
    return StepMeasurement(batch_size, precision, int(peak))

