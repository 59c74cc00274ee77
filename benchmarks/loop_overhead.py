"""Host time medseg's fit loop adds to each training step beyond the bare step, piece by piece, in one run.

A GPU step that never waits for the device runs as fast as its host can launch it: a compiled step of the spleen UNet
takes 16 ms on the H200, and every millisecond of Python the loop runs per step beside it can show in the fit loop's
pace (0.81x the bare step there, benchmarks/results/training/training_cuda_spleen_compile.md). This benchmark makes the step's
own compute small (a 2-level UNet of 2 and 4 channels on 8^3 patches, batch 2, one CPU thread) so that what it times
is host work, on a CPU or on a GPU machine's host (``--device cuda``). Interleaved ``--repeats`` times:
  * ``bare``: network + DiceCE + fused AdamW on one fixed batch, no Lightning, no data (on a GPU, synchronised each step);
  * ``medseg``: ``medseg.training.run([...])`` with in-process data loading, timed step end to step end, less fetching the
    batch (Lightning's data fetcher): the host time of one step of the fit loop.
Inside medseg's steps each piece is timed by wrapping it: the module's training step (its ``self.log`` calls apart),
backward, the optimizer step's own update, ``on_before_optimizer_step``, each callback's batch hooks (the progress bar
among them), moving the batch to the device, Lightning's logger connector and the learning-rate schedulers. What no
piece covers is Lightning's loop itself. All figures are medians over the timed steps, in ms per step.

    python -m benchmarks.loop_overhead --output benchmarks/results/loop_overhead/loop_overhead_cpu
    python -m benchmarks.loop_overhead --device cuda --output benchmarks/results/loop_overhead/loop_overhead_cuda   # on a GPU
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import tempfile
import time
import warnings
from collections import defaultdict
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from benchmarks.common import add_output_option, cpu_name, write_results
from benchmarks.training import speed_option, timed_steps
from medseg.data.demo import CLASS_NAMES
from medseg.model.loss import segmentation_loss
from medseg.model.networks import network_for
from medseg.planning.step import training_optimizer
from medseg.precision import CPU_BF16_ENV, resolve_precision
from medseg.recipe import Recipe
from medseg.training import command as train
from medseg.training.speed import apply_speed_settings, resolved_speed_settings

NETWORK = {"channels": [2, 4], "strides": [2], "num_res_units": 0}
PATCH, BATCH = (8, 8, 8), 2
WARMUP = 10
FETCH = "fetching the batch"
BATCH_HOOKS = ("on_train_batch_start", "on_train_batch_end")


class PieceTimes:
    """Seconds spent in each named piece, per training step (the step count comes from ``step_ended``)."""

    def __init__(self) -> None:
        self.current: dict[str, float] = defaultdict(float)
        self.steps: list[dict[str, float]] = []
        self.ends: list[float] = []

    def wrap(self, owner: object, attribute: str, name: str) -> None:
        """Time ``owner.attribute`` under ``name`` from now on (set on the instance, so only this run is affected)."""
        method = getattr(owner, attribute)

        @functools.wraps(method)
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self.current[name] += time.perf_counter() - start

        setattr(owner, attribute, timed)

    def step_ended(self) -> None:
        self.ends.append(time.perf_counter())
        self.steps.append(dict(self.current))
        self.current.clear()


class PieceTimer(Callback):
    """Wraps the pieces of the fit loop at training start and closes each step's record at its end."""

    def __init__(self) -> None:
        self.times = PieceTimes()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        times = self.times
        for callback in trainer.callbacks:
            for hook in BATCH_HOOKS:
                if callback is not self and getattr(type(callback), hook) is not getattr(Callback, hook):
                    times.wrap(callback, hook, f"callback {type(callback).__name__}")
        times.wrap(pl_module, "optimizer_step", "optimizer step (all of it)")
        times.wrap(pl_module, "training_step", "training step (all of it)")
        times.wrap(pl_module, "log", "self.log in the training step")
        times.wrap(pl_module, "backward", "backward")
        times.wrap(pl_module, "on_before_optimizer_step", "on_before_optimizer_step")
        times.wrap(trainer.strategy, "batch_to_device", "batch to device")
        times.wrap(trainer._logger_connector, "on_batch_end", "logger connector")
        times.wrap(trainer._logger_connector, "update_train_step_metrics", "logger connector")
        times.wrap(trainer.fit_loop.epoch_loop, "update_lr_schedulers", "learning-rate schedulers")
        # a special method is looked up on the class: the data fetcher's is wrapped there for this fit only
        self._fetcher_class = type(trainer.fit_loop._data_fetcher)
        self._fetch = self._fetcher_class.__next__
        times.wrap(self._fetcher_class, "__next__", FETCH)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._fetcher_class.__next__ = self._fetch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.times.step_ended()


def medseg_fit(out: Path, precision: str, steps: int, device: str, options: list[str]) -> dict[str, float]:
    """Run medseg's fit loop for WARMUP + ``steps`` steps; return each piece's median ms per step and the loop's host time."""
    args = [
        f"--data.patch_size={list(PATCH)}", f"--data.batch_size={BATCH}", f"--data.iterations_per_epoch={WARMUP + steps}",
        "--data.num_workers=0", "--data.check_dataset=false", f"--data.cache_dir={out / 'cache'}",
        f"--model.network_kwargs={json.dumps(NETWORK)}", "--batch_planner.enabled=false",
        "--trainer.max_epochs=1", f"--trainer.accelerator={'gpu' if device == 'cuda' else 'cpu'}", f"--trainer.precision={precision}",
        "--trainer.num_sanity_val_steps=0", "--trainer.limit_val_batches=1", "--trainer.enable_model_summary=false",
        "--trainer.callbacks+=benchmarks.loop_overhead.PieceTimer",
        f"--trainer.default_root_dir={out}", f"--trainer.logger.init_args.save_dir={out}",
        *[f"--{option}" for option in options],
    ]
    trainer = train.run(args).model.trainer
    times = next(c for c in trainer.callbacks if type(c).__name__ == "PieceTimer").times
    steps_seen = times.steps[WARMUP:]
    step_seconds = np.diff(times.ends[WARMUP - 1:])
    fetch = np.array([step.get(FETCH, 0.0) for step in steps_seen])
    names = sorted({name for step in steps_seen for name in step} - {FETCH})
    pieces = {name: 1e3 * float(np.median([step.get(name, 0.0) for step in steps_seen])) for name in names}
    whole = "optimizer step (all of it)"
    inner = ("training step (all of it)", "backward", "on_before_optimizer_step")
    update = 1e3 * np.median([s.get(whole, 0) - sum(s.get(n, 0) for n in inner) for s in steps_seen])
    own_step = 1e3 * np.median([s.get("training step (all of it)", 0) - s.get("self.log in the training step", 0) for s in steps_seen])
    outside = [n for n in names if n not in (whole, *inner, "self.log in the training step")]
    rest = 1e3 * np.median([t - f - s.get(whole, 0) - sum(s.get(n, 0) for n in outside) for t, f, s in zip(step_seconds, fetch, steps_seen)])
    return {
        "host_ms_per_step": round(1e3 * float(np.median(step_seconds - fetch)), 3),
        "fetch_ms_per_step": round(1e3 * float(np.median(fetch)), 3),
        "pieces_ms_per_step": {
            "training step, less self.log (forward, loss, medseg's NaN/Inf count, running loss)": round(own_step, 3),
            "backward": round(pieces.get("backward", 0.0), 3),
            "optimizer update and Lightning's closure (zero_grad, hooks, fused AdamW, gradient scaler)": round(float(update), 3),
            **{name: round(value, 3) for name, value in pieces.items() if name not in (whole, "training step (all of it)", "backward")},
            "Lightning's loop (what no piece covers)": round(float(rest), 3),
        },
    }


def bare_steps(precision: str, steps: int, device: torch.device, options: list[str]) -> float:
    """Return the median ms of network + loss + fused AdamW on one fixed batch, with medseg's speed settings."""
    torch.manual_seed(0)
    network = network_for(Recipe("UNet", NETWORK, ("CT",), CLASS_NAMES, PATCH)).to(device).train()
    choices = speed_option(options, "channels_last"), speed_option(options, "compile")
    apply_speed_settings(network, *resolved_speed_settings(*choices, device.type, steps=WARMUP + steps))
    optimizer = training_optimizer(network.parameters())
    loss_fn = segmentation_loss()
    image = torch.rand(BATCH, 1, *PATCH, device=device)
    label = torch.randint(0, len(CLASS_NAMES), (BATCH, 1, *PATCH), device=device).float()
    seconds = timed_steps(network, optimizer, loss_fn, image, label, precision, WARMUP + steps)
    return 1e3 * float(np.median(seconds[WARMUP:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--precision", default="16-mixed", help="requested as medseg's configs do; resolved for the device")
    parser.add_argument("--steps", type=int, default=300, help="timed steps per run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for torch: 1 keeps a tiny step's timing steady")
    parser.add_argument("--option", action="append", default=[], help="medseg override, also applied to the bare step where it applies (repeatable)")
    add_output_option(parser)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("medseg").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    precision, _ = resolve_precision(args.precision, device.type)
    load_before, started = os.getloadavg(), time.perf_counter()
    bare, runs = [], []
    with tempfile.TemporaryDirectory(prefix="medseg-loop-") as tmp:
        bare_steps(precision, args.steps, device, args.option)  # kernels and allocations of a new process, untimed
        for repeat in range(args.repeats):
            bare.append(bare_steps(precision, args.steps, device, args.option))
            runs.append(medseg_fit(Path(tmp) / f"run{repeat}", precision, args.steps, args.device, args.option))
            print(f"repeat {repeat}: bare {bare[-1]:.2f} ms, medseg loop {runs[-1]['host_ms_per_step']:.2f} ms host time a step "
                  f"(+ {runs[-1]['fetch_ms_per_step']:.2f} ms fetching); load {os.getloadavg()[0]:.1f}", flush=True)
    forced = os.environ.get(CPU_BF16_ENV, "")
    pieces = list(runs[0]["pieces_ms_per_step"])
    report = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "cpu_threads": torch.get_num_threads(),
        "load_average_before_after": [round(v, 2) for v in (*load_before, *os.getloadavg())],
        "seconds": round(time.perf_counter() - started),
        "setting": {"network_kwargs": NETWORK, "patch": PATCH, "batch": BATCH, "precision": precision, "steps": args.steps,
                    "warmup": WARMUP, "repeats": args.repeats, "options": args.option},
        "bare_ms_per_step": [round(v, 3) for v in bare],
        "medseg_host_ms_per_step": [r["host_ms_per_step"] for r in runs],
        "medseg_fetch_ms_per_step": [r["fetch_ms_per_step"] for r in runs],
        "pieces_ms_per_step": {name: [r["pieces_ms_per_step"].get(name) for r in runs] for name in pieces},
    }
    report["loop_added_ms_per_step"] = round(float(np.median(report["medseg_host_ms_per_step"]) - np.median(bare)), 3)
    print(json.dumps({k: report[k] for k in ("bare_ms_per_step", "medseg_host_ms_per_step", "loop_added_ms_per_step", "pieces_ms_per_step")}, indent=1))
    title = f"Host time of the fit loop per training step, {report['device']}"
    write_results(args.output, title, report, markdown(report), environment={CPU_BF16_ENV: forced} if forced else None)


def markdown(report: dict) -> str:
    """Return the setting, one row per measured piece (a column per run) and what the loop adds."""
    s = report["setting"]
    cells = lambda values: " / ".join("" if v is None else f"{v:.3f}" for v in values)  # noqa: E731
    rows = [f"| bare step (network, loss, fused AdamW; no Lightning, no data) | {cells(report['bare_ms_per_step'])} |",
            f"| **medseg fit loop, host time a step** (step end to step end, less fetching) | {cells(report['medseg_host_ms_per_step'])} |"]
    rows += [f"| &nbsp;&nbsp;{name} | {cells(values)} |" for name, values in report["pieces_ms_per_step"].items()]
    rows += [f"| fetching the batch (in-process loading: not host overhead of the loop) | {cells(report['medseg_fetch_ms_per_step'])} |"]
    return (
        f"{report['cpu_threads']} CPU thread(s); load average (1, 5, 15 min) before and after: "
        f"{report['load_average_before_after']}; {report['seconds']} s in all.  \n"
        f"UNet {s['network_kwargs']}, patch {s['patch']}, batch {s['batch']}, precision {s['precision']}; {s['steps']} timed steps after "
        f"{s['warmup']} warm-up steps, {s['repeats']} interleaved runs (one column each); medians in ms per step"
        f"{'; options ' + ', '.join(s['options']) if s['options'] else ''}.\n\n"
        "| ms per step | runs |\n|---|---|\n" + "\n".join(rows)
        + f"\n\nThe fit loop adds **{report['loop_added_ms_per_step']:.2f} ms** of host time a step to the bare step (medians). "
        "Pieces are medians of their own, so they need not add up to the total."
    )


if __name__ == "__main__":
    main()
