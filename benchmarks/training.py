"""Training patches/s of medseg's fit loop against the bare step and a MONAI-tutorial Lightning loop, in one run.

On one synthetic MSD-layout CT dataset (12 scans of 192x192x112 voxels at 0.8x0.8x2.5 mm, written once to
``--data``), with the same network, patch, precision and patches per step, it measures:
  * ``bare``: network + DiceCE + AdamW under the precision's autocast on one fixed batch: no data, no Lightning;
  * ``medseg``: ``medseg.training.run([...])``, the full fit loop a user runs (data module, callbacks, logging);
  * ``peer``: MONAI's spleen Lightning tutorial written out here (CacheDataset, RandCropByPosNegLabeld with
    ``num_samples``, DiceLoss, Adam, ``loss.item()`` logged every step).
Warm-up steps are left out. The three run interleaved, ``--repeats`` times, so a busy machine slows all alike, and
patches/s comes from each loop's first-quartile step time (step end to step end, so the fit loops' data wait is
included): on a shared machine whose cores are oversubscribed, OpenMP steps run up to 25x slower in bursts, and the
quartile measures the loops rather than those bursts (median and fastest steps are in the JSON too). Where the time
goes comes from Lightning's SimpleProfiler (fetching the next batch against running the training batch) and from
medseg's ``ThroughputMonitor`` (data-wait share).

Settings: ``spleen`` is configs/spleen_ct.yaml's network and 96^3 patches, 8 patches per step (the tutorial's
4 samples x batch 2; ``--samples 2`` halves it, for slow machines); ``demo`` is the demo's default UNet and 64x64x32
patch, 4 patches per step (2 x 2). The bare step takes medseg's speed settings as its run resolves them (channels-last
weights on a CPU, compiled on a GPU, or what ``--option speed.…`` says); the tutorial loop takes none.

    python -m benchmarks.training --setting spleen --output benchmarks/results/training/training_cpu_spleen
    python -m benchmarks.training --setting demo --output benchmarks/results/training/training_cpu_demo
    # on a GPU (more steps: a step takes milliseconds), each setting against the defaults:
    python -m benchmarks.training --setting spleen --steps 30 --option data.num_workers=4
    python -m benchmarks.training --setting spleen --steps 30 --option data.augment_on_gpu=true
    python -m benchmarks.training --setting spleen --steps 30 --option speed.channels_last=true
    python -m benchmarks.training --setting spleen --steps 30 --option speed.compile=false   # on a GPU: not compiled
On a GPU read the whole-run figures (every timed step's wall time): steps there do not wait for the device, so the
first-quartile step is one whose batch was ready and hides the data wait. AMP against TF32 and strict FP32:
benchmarks/gpu_precision.py.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.profilers import SimpleProfiler
from monai import transforms as T
from monai.data import CacheDataset, DataLoader, list_data_collate
from monai.losses import DiceLoss

from benchmarks.common import add_output_option, cpu_name, write_results
from medseg.data.demo import CLASS_NAMES
from medseg.model.loss import segmentation_loss
from medseg.model.networks import network_for
from medseg.precision import CPU_BF16_ENV, autocast, resolve_precision
from medseg.recipe import Recipe
from medseg.testing import CT_PHANTOMS, write_ct_phantoms
from medseg.training import command as train
from medseg.training.module import DEFAULT_NETWORK_KWARGS
from medseg.training.speed import apply_speed_settings, resolved_speed_settings
from medseg.training.throughput import ThroughputMonitor

SPLEEN_NETWORK = {"channels": [16, 32, 64, 128, 256], "strides": [2, 2, 2, 2], "num_res_units": 2, "norm": "batch"}


@dataclass(frozen=True)
class Setting:
    """What all three loops share: network, patch, preprocessing, patches per step (peer: samples x batch)."""

    config: str | None
    network_kwargs: dict
    patch: tuple[int, int, int]
    spacing: tuple[float, float, float]
    ct_window: tuple[float, float]
    samples_per_scan: int
    scans_per_step: int
    steps: int
    warmup: int = 2

    @property
    def patches_per_step(self) -> int:
        return self.samples_per_scan * self.scans_per_step


SETTINGS = {
    "spleen": Setting("configs/spleen_ct.yaml", SPLEEN_NETWORK, (96, 96, 96), (1.5, 1.5, 2.0), (-57.0, 164.0), 4, 2, steps=3),
    "demo": Setting(None, DEFAULT_NETWORK_KWARGS, (64, 64, 32), (1.5, 1.5, 3.0), (-200.0, 300.0), 2, 2, steps=20),
}


@dataclass
class Measurement:
    """One loop's step times over all runs (warm-up left out), and where the time went."""

    patches_per_step: int
    step_seconds: list[float] = field(default_factory=list)
    run_patches_per_s: list[float] = field(default_factory=list)
    data_wait_share: list[float] = field(default_factory=list)
    fetch_s_per_step: list[float] = field(default_factory=list)
    batch_s_per_step: list[float] = field(default_factory=list)

    def add_run(self, step_seconds: list[float]) -> None:
        self.step_seconds += step_seconds
        self.run_patches_per_s.append(self.patches_per_step * len(step_seconds) / sum(step_seconds))

    def summary(self) -> dict:
        mean = lambda values: round(float(np.mean(values)), 4) if values else None  # noqa: E731
        return {
            "patches_per_s": round(self.patches_per_step / float(np.quantile(self.step_seconds, 0.25)), 3),
            # every timed step's wall time counted: on a GPU, where steps do not wait for the device, this is the pace
            # the data pipeline allows, which the quartile (fast steps, batch ready) hides
            "patches_per_s_whole_runs": round(self.patches_per_step * len(self.step_seconds) / float(np.sum(self.step_seconds)), 3),
            "quartile_step_s": round(float(np.quantile(self.step_seconds, 0.25)), 4),
            "median_step_s": round(float(np.median(self.step_seconds)), 4),
            "fastest_step_s": round(min(self.step_seconds), 4),
            "steps": len(self.step_seconds),
            "patches_per_s_of_each_run": [round(v, 3) for v in self.run_patches_per_s],
            "data_wait_share": mean(self.data_wait_share),
            "fetch_s_per_step": mean(self.fetch_s_per_step),
            "training_batch_s_per_step": mean(self.batch_s_per_step),
        }


class StepClock(Callback):
    """Wall time from one training step's end to the next one's: the step, the loop around it and the data wait."""

    def __init__(self) -> None:
        self.ends: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.ends.append(time.perf_counter())

    def step_seconds(self, warmup: int) -> list[float]:
        return list(np.diff(self.ends[warmup - 1:]))


def profiled(trainer: L.Trainer, warmup: int) -> tuple[float, float]:
    """Return mean seconds per step fetching the next batch and running the training batch, warm-up left out."""
    durations = trainer.profiler.recorded_durations
    fetch = durations["[_TrainingEpochLoop].train_dataloader_next"][warmup:]
    batch = durations["run_training_batch"][warmup:]
    return float(np.mean(fetch)), float(np.mean(batch))


def record(measurement: Measurement, trainer: L.Trainer, warmup: int) -> None:
    clock = next(c for c in trainer.callbacks if type(c).__name__ == "StepClock")
    monitor = next(c for c in trainer.callbacks if isinstance(c, ThroughputMonitor))
    measurement.add_run(clock.step_seconds(warmup))
    fetch, batch = profiled(trainer, warmup)
    measurement.data_wait_share.append(monitor.last.data_wait_share)
    measurement.fetch_s_per_step.append(fetch)
    measurement.batch_s_per_step.append(batch)


def bare_step(setting: Setting, precision: str, device: torch.device, options: list[str]) -> list[float]:
    """Return the step times of network + loss + AdamW on one fixed batch under the precision's autocast."""
    torch.manual_seed(0)
    recipe = Recipe("UNet", setting.network_kwargs, ("CT",), CLASS_NAMES, setting.patch)
    network = network_for(recipe).to(device).train()
    loss_fn = segmentation_loss()
    # the same speed settings as medseg's run resolves: --option speed.channels_last=…, speed.compile=…, trainer.benchmark=false
    torch.backends.cudnn.benchmark = "trainer.benchmark=false" not in options
    choices = speed_option(options, "channels_last"), speed_option(options, "compile")
    apply_speed_settings(network, *resolved_speed_settings(*choices, device.type, steps=setting.warmup + setting.steps))
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-3, weight_decay=1e-5)
    image = torch.rand(setting.patches_per_step, 1, *setting.patch, device=device)
    label = torch.randint(0, len(CLASS_NAMES), (setting.patches_per_step, 1, *setting.patch), device=device).float()
    return timed_steps(network, optimizer, loss_fn, image, label, precision, setting.warmup + setting.steps)[setting.warmup:]


def timed_steps(network, optimizer, loss_fn, image, label, precision: str, count: int) -> list[float]:
    """Return the seconds of ``count`` training steps on one fixed batch under the precision's autocast (and, for fp16,
    its gradient scaler), each waited for on a GPU."""
    device = image.device
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "16-mixed")
    seconds = []
    for _ in range(count):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with autocast(precision, device.type):
            loss = loss_fn(network(image), label)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        synchronize(device)
        seconds.append(time.perf_counter() - start)
    return seconds


def speed_option(options: list[str], name: str) -> bool | str:
    """Return the value ``--option speed.NAME=…`` gives (true, false, auto), "auto" when none does."""
    values = [option.split("=", 1)[1] for option in options if option.startswith(f"speed.{name}=")]
    value = values[-1] if values else "auto"
    return {"true": True, "false": False}.get(value, value)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def medseg_fit(setting: Setting, root: Path, out: Path, precision: str, options: list[str]) -> L.Trainer:
    """Run ``medseg.training.run`` for warm-up + timed steps (one validation case at the end) and return its trainer."""
    args = ["--config", setting.config] if setting.config else []
    args += [
        f"--data.root={root}", f"--data.patch_size={list(setting.patch)}", f"--data.spacing={list(setting.spacing)}",
        f"--data.ct_window={list(setting.ct_window)}", "--data.normalization=ct",
        f"--data.batch_size={setting.patches_per_step}", f"--data.iterations_per_epoch={setting.warmup + setting.steps}",
        f"--data.num_folds={CT_PHANTOMS}", "--data.check_dataset=false", f"--data.cache_dir={out / 'cache'}",
        f"--model.network_kwargs={json.dumps(setting.network_kwargs)}",
        "--batch_planner.enabled=false",  # every loop trains at the same patches per step
        "--trainer.max_epochs=1", f"--trainer.precision={precision}", "--trainer.num_sanity_val_steps=0",
        "--trainer.limit_val_batches=1", "--trainer.profiler=simple", "--trainer.callbacks+=benchmarks.training.StepClock",
        f"--trainer.default_root_dir={out}", f"--trainer.logger.init_args.save_dir={out}",
    ]
    args += [f"--{option}" for option in options]
    result = train.run(args)
    return result.model.trainer


class TutorialNet(L.LightningModule):
    """MONAI's spleen Lightning tutorial (spleen_segmentation_3d_lightning.ipynb), with this benchmark's network and patch."""

    def __init__(self, setting: Setting, files: list[dict], num_workers: int = 4) -> None:
        super().__init__()
        self.setting, self.files, self.num_workers = setting, files, num_workers
        self._model = network_for(Recipe("UNet", setting.network_kwargs, ("CT",), CLASS_NAMES, setting.patch))
        self.loss_function = DiceLoss(to_onehot_y=True, softmax=True)
        low, high = setting.ct_window
        keys = ["image", "label"]
        self.train_ds = CacheDataset(
            files,
            T.Compose([
                T.LoadImaged(keys),
                T.EnsureChannelFirstd(keys),
                T.Orientationd(keys, axcodes="RAS"),
                T.Spacingd(keys, pixdim=setting.spacing, mode=("bilinear", "nearest")),
                T.ScaleIntensityRanged("image", a_min=low, a_max=high, b_min=0.0, b_max=1.0, clip=True),
                T.CropForegroundd(keys, source_key="image"),
                # not in the tutorial, whose scans stay larger than the patch after cropping to the body; these may not
                T.SpatialPadd(keys, spatial_size=setting.patch),
                T.RandCropByPosNegLabeld(keys, label_key="label", spatial_size=setting.patch, pos=1, neg=1,
                                         num_samples=setting.samples_per_scan, image_key="image", image_threshold=0),
            ]),
            cache_rate=1.0,
            num_workers=num_workers,
            progress=False,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._model(x)

    def train_dataloader(self) -> DataLoader:
        # the tutorial shuffles one pass over its 32 training scans; drawing with replacement gives every loop the same steps
        steps = self.setting.warmup + self.setting.steps
        sampler = torch.utils.data.RandomSampler(self.train_ds, replacement=True, num_samples=steps * self.setting.scans_per_step)
        return DataLoader(self.train_ds, batch_size=self.setting.scans_per_step, sampler=sampler, num_workers=self.num_workers,
                          collate_fn=list_data_collate)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self._model.parameters(), 1e-4)

    def training_step(self, batch: dict, batch_idx: int) -> dict:
        images, labels = batch["image"], batch["label"]
        output = self.forward(images)
        loss = self.loss_function(output, labels)
        self.log("train_loss", loss.item())
        return {"loss": loss}


def peer_fit(module: TutorialNet, out: Path, precision: str) -> L.Trainer:
    trainer = L.Trainer(max_epochs=1, precision=precision, benchmark=True, num_sanity_val_steps=0, log_every_n_steps=16, profiler=SimpleProfiler(),
                        callbacks=[ThroughputMonitor(), StepClock()], default_root_dir=out, logger=L.pytorch.loggers.CSVLogger(out, name="peer"))
    trainer.fit(module)
    return trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setting", choices=sorted(SETTINGS), default="spleen")
    parser.add_argument("--data", default=str(Path(tempfile.gettempdir()) / "medseg-training-benchmark"), help="where the scans are written once")
    parser.add_argument("--precision", default="16-mixed", help="requested as medseg's configs do; resolved for this machine")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per run (default: the setting's)")
    parser.add_argument("--samples", type=int, default=None, help="patches per scan in the tutorial loop (default: the setting's)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--option", action="append", default=[],
                        help="medseg override, also applied to the bare step where it applies: speed.channels_last=true, speed.compile=true, "
                             "trainer.benchmark=false, data.augment_on_gpu=true (repeatable)")
    add_output_option(parser)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore")

    setting = SETTINGS[args.setting]
    changes = {"steps": args.steps, "samples_per_scan": args.samples}
    setting = Setting(**{**asdict(setting), **{key: value for key, value in changes.items() if value}})
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    precision, _ = resolve_precision(args.precision, device.type)
    root = write_ct_phantoms(Path(args.data))
    spec = [{"image": str(root / c["image"]), "label": str(root / c["label"])} for c in json.loads((root / "dataset.json").read_text())["training"]]
    load_before = os.getloadavg()
    started = time.perf_counter()
    bare, medseg, peer = (Measurement(setting.patches_per_step) for _ in range(3))
    with tempfile.TemporaryDirectory(prefix="medseg-bench-") as tmp:
        out = Path(tmp)
        tutorial = TutorialNet(setting, spec[:-1])  # cached once, as medseg caches once per run: setup is not timed
        # oneDNN builds its kernels for each new shape during the first steps of a process: warm it up untimed first
        bare_step(setting, precision, device, args.option)
        for repeat in range(args.repeats):
            bare.add_run(bare_step(setting, precision, device, args.option))
            record(medseg, medseg_fit(setting, root, out / f"medseg{repeat}", precision, args.option), setting.warmup)
            torch.manual_seed(repeat)
            tutorial._model = network_for(Recipe("UNet", setting.network_kwargs, ("CT",), CLASS_NAMES, setting.patch))
            record(peer, peer_fit(tutorial, out / f"peer{repeat}", precision), setting.warmup)
            print(f"repeat {repeat}: bare {bare.run_patches_per_s[-1]:.2f}, medseg {medseg.run_patches_per_s[-1]:.2f}, "
                  f"peer {peer.run_patches_per_s[-1]:.2f} patches/s; load {os.getloadavg()[0]:.1f}", flush=True)
    forced = os.environ.get(CPU_BF16_ENV, "")  # a forced precision resolution is part of the command
    report = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "cpu_threads": torch.get_num_threads(),
        "load_average_before_after": [round(v, 2) for v in (*load_before, *os.getloadavg())],
        "seconds": round(time.perf_counter() - started),
        "setting": {"name": args.setting, **asdict(setting), "precision": precision, "patches_per_step": setting.patches_per_step},
        "options": args.option,
        "bare": bare.summary(),
        "medseg": medseg.summary(),
        "peer": peer.summary(),
    }
    for loop, other in (("medseg", "peer"), ("medseg", "bare"), ("peer", "bare")):
        for figure, suffix in (("patches_per_s", ""), ("patches_per_s_whole_runs", "_whole_runs")):
            report[f"{loop}_vs_{other}{suffix}"] = round(report[loop][figure] / report[other][figure], 3)
    print(json.dumps({k: v for k, v in report.items() if k.split("_")[0] in ("bare", "medseg", "peer")}, indent=1))
    title = f"Training throughput, {args.setting} setting, {report['device']}"
    write_results(args.output, title, report, markdown(report), environment={CPU_BF16_ENV: forced} if forced else None)


def cell(value: float | None, pattern: str) -> str:
    return "" if value is None else pattern.format(value)


def markdown(report: dict) -> str:
    """Return the setting, one row per loop and the ratios between the loops."""
    s = report["setting"]
    rows = []
    for name in ("bare", "medseg", "peer"):
        r = report[name]
        ratio = 1.0 if name == "bare" else report[f"{name}_vs_bare"]
        whole = 1.0 if name == "bare" else report[f"{name}_vs_bare_whole_runs"]
        rows.append(f"| {name} | {r['patches_per_s']:.2f} | {ratio} | {r['patches_per_s_whole_runs']:.2f} | {whole} | {cell(r['data_wait_share'], '{:.1%}')} | "
                    f"{cell(r['fetch_s_per_step'], '{:.3f}')} | {cell(r['training_batch_s_per_step'], '{:.3f}')} |")
    return (
        f"{report['cpu_threads']} CPU threads; load average (1, 5, 15 min) before and after: "
        f"{report['load_average_before_after']}; {report['seconds']} s in all.  \n"
        f"UNet {s['network_kwargs']}, patch {s['patch']}, {s['patches_per_step']} patches per step, precision {s['precision']}; "
        f"{s['steps']} timed steps after {s['warmup']} warm-up steps; {len(report['medseg']['patches_per_s_of_each_run'])} interleaved runs each; patches/s from the first-quartile step time"
        f"{'; options ' + ', '.join(report['options']) if report['options'] else ''}.\n\n"
        "| loop | patches/s (quartile step) | x bare step | patches/s (whole runs) | x bare step | data wait (ThroughputMonitor) | fetch s/step (SimpleProfiler) | training batch s/step (SimpleProfiler) |\n"
        "|---|---|---|---|---|---|---|---|\n"
        + "\n".join(rows)
        + f"\n\nmedseg / peer: **{report['medseg_vs_peer']}x**; medseg / bare step: **{report['medseg_vs_bare']}x**; "
        f"peer / bare step: {report['peer_vs_bare']}x (quartile steps). Whole runs (every timed step's wall time): medseg / peer "
        f"**{report['medseg_vs_peer_whole_runs']}x**, medseg / bare step **{report['medseg_vs_bare_whole_runs']}x**."
    )


if __name__ == "__main__":
    main()
