"""Step cost on a real CUDA GPU: trial steps measured with the caching allocator's peak statistics."""

from __future__ import annotations

import time

import torch

from medseg.errors import MedsegError
from medseg.model.networks import network_for
from medseg.planning.step import StepCost, StepMeasurement, TrainingSetup, cudnn_autotuning, device_of, run_training_step, run_trial, training_setup
from medseg.recipe import Recipe


def measure_cuda_step(setup: TrainingSetup, batch_size: int, precision: str, train: bool = True, steps: int = 1) -> StepMeasurement:
    """Return the steady-state and first-step peaks of a trial at ``batch_size`` (None when out of memory).

    The trial runs a warm-up step, where cuDNN autotunes the new shape (``cudnn.benchmark``, as training sets it),
    then resets the peak and runs ``steps`` more steps with the same optimizer: their peak is the steady state the
    batch is planned on, and the last one's time the throughput. PyTorch's cuDNN v8 autotuning sizes its trial
    workspace from the free memory and halves it until an allocation fits under the cap (``get_available_workspace``
    in ``aten/src/ATen/native/cudnn/Conv_v8.cpp``), so the warm-up's peak says how much was free, not what the
    step needs: planned on it, a 96^3 fp32 UNet on an H200 capped at 8 GiB got batch 11 and trained at 31 % of its
    budget (benchmarks/results/memory/memory_cuda_spleen.md). The warm-up still has to fit under the cap, as training's
    first step does: a size whose autotuning finds no workspace fails its trial.
    Memory is released before returning either way, so one trial leaves nothing behind for the next.
    """
    device = device_of(setup.net)
    if device.type != "cuda":
        raise MedsegError(f"measuring memory needs a CUDA device, the model is on {device}: use the CPU estimator")

    def timed_steps() -> tuple[int, float | None, int]:
        torch.cuda.reset_peak_memory_stats(device)
        times: list[float] = []
        first_step_peak: list[int] = []

        def mark() -> None:
            torch.cuda.synchronize(device)
            times.append(time.perf_counter())
            if len(times) == 2:  # the warm-up step ended: measure the steady state from here
                first_step_peak.append(torch.cuda.max_memory_allocated(device))
                torch.cuda.reset_peak_memory_stats(device)

        mark()
        run_training_step(setup, batch_size, precision, train, steps=1 + steps, after_step=mark)
        return torch.cuda.max_memory_allocated(device), times[-1] - times[-2], first_step_peak[0]

    return run_trial(timed_steps, batch_size, precision)


def cuda_step_cost(setup: TrainingSetup, precision: str, train: bool = True) -> StepCost:
    """Return the step cost of ``setup``'s network (on a CUDA GPU) at ``precision``: one measured trial per call."""
    return lambda batch_size: measure_cuda_step(setup, batch_size, precision, train)


def cuda_recipe_step_cost(recipe: Recipe, precision: str) -> StepCost:
    """Return the step cost of a new network of ``recipe`` on the current CUDA GPU, cuDNN autotuning on as in training."""
    setup = training_setup(recipe, network_for(recipe).cuda())

    def cost(batch_size: int) -> StepMeasurement:
        with cudnn_autotuning(True):
            return measure_cuda_step(setup, batch_size, precision)

    return cost
