"""CPU estimate of a training step's peak memory, for comparing precisions without a GPU.

The estimate counts, after one real step under the precision's autocast: weights, gradients (same size as
weights), optimizer state, the batch, and every tensor autograd saved for backward (caught with
``torch.autograd.graph.saved_tensors_hooks``; autocast's half-precision copies are what make mixed
precision smaller). Transient buffers inside backward and allocator rounding are not counted.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import replace

import torch
from torch import nn

from medseg.memory.measure import StepMeasurement, TrainingSetup, device_of, preserved_weights, run_training_step, synthetic_batch
from medseg.memory.plan import MemoryFit, fit_memory


def _storage_bytes(tensors: Iterable[torch.Tensor]) -> dict[int, int]:
    """Map each distinct storage (views share one) to its size in bytes."""
    return {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}


def estimate_step(setup: TrainingSetup, batch_size: int, precision: str) -> StepMeasurement:
    """Return the estimated peak bytes of one training step at ``batch_size``, counted while running it.

    The network's weights are restored afterwards, so estimating does not train the model.
    """
    weights = _storage_bytes(setup.net.parameters())
    batch = synthetic_batch(setup, batch_size, device_of(setup.net))
    batch_bytes = _storage_bytes(batch.values())
    counted = {**weights, **batch_bytes}
    saved: dict[int, int] = {}
    optimizers: list[torch.optim.Optimizer] = []

    def keep_optimizer(parameters: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
        optimizers.append(setup.make_optimizer(parameters))
        return optimizers[-1]

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in counted:
            saved[storage.data_ptr()] = storage.nbytes()
        # detached: an op that saves its own output (softmax) would otherwise hold its node through that output,
        # a cycle gc cannot see, and a step that never finishes backward (out of memory) would leak the graph
        return tensor.detach()

    start = time.perf_counter()
    with preserved_weights(setup.net), torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        run_training_step(replace(setup, make_optimizer=keep_optimizer), batch_size, precision, batch=batch)
    seconds = time.perf_counter() - start
    state = [v for per_param in optimizers[0].state.values() for v in per_param.values() if isinstance(v, torch.Tensor)]
    weight_bytes = sum(weights.values())
    # weights + their gradients (same size) + optimizer state + batch + activations saved for backward
    peak = 2 * weight_bytes + sum(_storage_bytes(state).values()) + sum(batch_bytes.values()) + sum(saved.values())
    return StepMeasurement(batch_size, precision, int(peak), seconds)


def estimate_memory(setup: TrainingSetup, precision: str, sizes: Sequence[int] = (1, 2)) -> tuple[MemoryFit, list[StepMeasurement]]:
    """Return the fitted memory line of ``precision`` from estimated steps at ``sizes``, and those estimates."""
    estimates = [estimate_step(setup, size, precision) for size in sizes]
    return fit_memory(estimates), estimates
