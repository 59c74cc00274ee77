"""What a dataset of N cases costs at training start: peak memory, time to the first batch, data wait, per cache mode.

Writes ``max(--cases)`` small synthetic CT-like cases once (a body, an organ and a lesion in noisy HU; ``--shape``
voxels at 1.25 x 1.25 x 2.5 mm, resampled to 1.5 x 1.5 x 3 mm: small, so that 1,000 cases fit the disk and the run
takes minutes on 2 cores), then datasets of each N (hard links to the first N cases). For every N and cache mode it
launches ``python -m medseg.train`` twice on one fresh cache folder (first start: empty cache; second start: same
cache), each in its own process, and records from inside it (``ScaleProbe``):
  * launch to the first training batch, and launch to the end of the data module's set-up (dataset check, cache);
  * the process's peak resident memory (VmHWM; the dataset check's reader processes are left out);
  * the data wait share of each epoch after the first step (``ThroughputMonitor``);
and, from outside, how many preprocessed files the disk cache gained. Modes: ``memory`` (the default before
``auto``: preprocessed at every start, held in memory), ``disk``, ``auto``, and ``auto`` as on a machine with only
``--small-memory-gib`` available (``available_memory_bytes`` replaced in the training process), where the larger
datasets do not fit. The runs go round N inside each mode and start, so the machine's load falls on all N alike.

A second part times drawing one patch from a case of realistic size (``--large-shape``) held in memory and read from
the disk cache, which is what ``auto`` chooses between.

    python -m benchmarks.dataset_scale --cases 50 200 1000 --output benchmarks/results/dataset_scale/dataset_scale_cpu
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from lightning.pytorch.callbacks import Callback

from benchmarks.common import REPO, add_output_option, markdown_rows, write_results

RECORD = "MEDSEG_BENCHMARK_SCALE_RECORD"  # file ScaleProbe writes to
SPACING = (1.25, 1.25, 2.5)
TARGET_SPACING = (1.5, 1.5, 3.0)
MODES = {"memory": ("memory", None), "disk": ("disk", None), "auto": ("auto", None), "auto, small memory": ("auto", "small")}
MiB = 2**20
NETWORK = {"channels": [8, 16, 32], "strides": [2, 2], "num_res_units": 1}  # small: the data pipeline is measured, not the step


class ScaleProbe(Callback):
    """Records wall-clock times, the data module's cache choice, data wait per epoch and peak memory to $MEDSEG_BENCHMARK_SCALE_RECORD,
    then ends the process when training ends (no final validation or summary)."""

    def __init__(self) -> None:
        self.record: dict = {"callback_built": time.time(), "data_wait": []}

    def setup(self, trainer, pl_module, stage) -> None:
        self.record["setup_done"] = time.time()
        self.record["storage"] = trainer.datamodule.storage.summary

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.record.setdefault("first_batch", time.time())

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._note_data_wait(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        self._note_data_wait(trainer)
        self.record["train_end"] = time.time()
        status = Path("/proc/self/status").read_text().splitlines()
        self.record["peak_rss_bytes"] = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))
        self.record.pop("_seen", None)
        Path(os.environ[RECORD]).write_text(json.dumps(self.record))
        os._exit(0)

    def _note_data_wait(self, trainer) -> None:
        from medseg.training.throughput import ThroughputMonitor

        last = next(c for c in trainer.callbacks if isinstance(c, ThroughputMonitor)).last
        if last is not None and last is not self.record.get("_seen"):
            self.record["data_wait"].append({"share": round(last.data_wait_share, 4), "steps": last.steps, "seconds": round(last.seconds, 3)})
            self.record["_seen"] = last


def write_case(rng: np.random.Generator, shape: tuple[int, int, int], image_path: Path, label_path: Path) -> None:
    """Write one CT-like case: a body of soft tissue in air, an organ (label 1) and a lesion (label 2) at random places."""
    import nibabel as nib

    grid = np.stack(np.meshgrid(*[np.linspace(-1.0, 1.0, n) for n in shape], indexing="ij"), axis=-1)
    body = ((grid / [0.9, 0.75, 1.2]) ** 2).sum(-1) < 1.0
    organ_centre = rng.uniform(-0.3, 0.3, 3) * [1, 1, 0.5]
    organ = (((grid - organ_centre) / rng.uniform(0.25, 0.4, 3)) ** 2).sum(-1) < 1.0
    lesion = (((grid - organ_centre - rng.uniform(-0.15, 0.15, 3)) / 0.12) ** 2).sum(-1) < 1.0
    label = np.zeros(shape, np.uint8)
    label[organ & body] = 1
    label[lesion & body] = 2
    hu = np.where(body, 40.0, -1000.0) + np.where(label == 1, 80.0, 0.0) + np.where(label == 2, 160.0, 0.0)
    image = np.clip(np.rint(hu + rng.normal(0.0, 20.0, shape)), -1024, 3071).astype(np.int16)
    affine = np.diag([*SPACING, 1.0])
    nib.save(nib.Nifti1Image(image, affine), image_path)
    nib.save(nib.Nifti1Image(label, affine), label_path)


def write_datasets(folder: Path, counts: list[int], shape: tuple[int, int, int]) -> dict[int, Path]:
    """Write ``max(counts)`` cases once under ``folder/cases`` and an MSD dataset of each count (hard links); return them by count."""
    cases = folder / "cases"
    cases.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for index in range(max(counts)):
        write_case(rng, shape, cases / f"image_{index:04d}.nii.gz", cases / f"label_{index:04d}.nii.gz")
    roots = {}
    for count in counts:
        root = folder / f"n{count}"
        (root / "imagesTr").mkdir(parents=True)
        (root / "labelsTr").mkdir()
        training = []
        for index in range(count):
            name = f"case_{index:04d}.nii.gz"
            os.link(cases / f"image_{index:04d}.nii.gz", root / "imagesTr" / name)
            os.link(cases / f"label_{index:04d}.nii.gz", root / "labelsTr" / name)
            training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
        description = {"modality": {"0": "CT"}, "labels": {"0": "background", "1": "organ", "2": "lesion"}, "training": training}
        (root / "dataset.json").write_text(json.dumps(description))
        roots[count] = root
    return roots


def training_options(root: Path, cache: str, cache_dir: Path, out: Path, epochs: int, steps: int) -> list[str]:
    return [
        f"--data.root={root}", f"--data.cache={cache}", f"--data.cache_dir={cache_dir}", "--data.patch_size=[32, 32, 16]",
        f"--data.spacing={list(TARGET_SPACING)}", "--data.num_workers=0", f"--data.iterations_per_epoch={steps}",
        f"--model.network_kwargs={json.dumps(NETWORK)}",
        "--trainer.accelerator=cpu", f"--trainer.max_epochs={epochs}", "--trainer.limit_val_batches=0", "--trainer.logger=false",
        "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={out}",
        "--trainer.callbacks+=benchmarks.dataset_scale.ScaleProbe",
    ]


def child(available_gib: float | None, options: list[str]) -> int:
    """Run ``medseg.train`` in this process, as if only ``available_gib`` of memory were available (None: as it is);
    return its exit code."""
    from medseg.training import command as train

    if available_gib is not None:
        import medseg.training.datamodule

        medseg.training.datamodule.available_memory_bytes = lambda: int(available_gib * 2**30)
    return train.main(options)


def one_start(options: list[str], available_gib: float | None, cache_dir: Path, log: Path) -> dict:
    """Launch one training process and return what ScaleProbe recorded, in seconds from launch, with the disk cache's growth."""
    record = cache_dir.parent / "record.json"
    record.unlink(missing_ok=True)
    files_before = len(list(cache_dir.rglob("*.pt")))
    command = [sys.executable, "-m", "benchmarks.dataset_scale", "--child", *(["--available-gib", str(available_gib)] if available_gib is not None else []), "--", *options]
    launched = time.time()
    with log.open("a") as output:
        process = subprocess.Popen(command, cwd=REPO, env={**os.environ, RECORD: str(record)}, stdout=output, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
    if status != 0 or not record.is_file():
        raise SystemExit(f"training failed ({status}): see {log}")
    times = json.loads(record.read_text())
    return {
        "to_first_batch_s": round(times["first_batch"] - launched, 2),
        "to_setup_done_s": round(times["setup_done"] - launched, 2),
        "to_callback_built_s": round(times["callback_built"] - launched, 2),
        "training_s": round(times["train_end"] - times["first_batch"], 2),
        "peak_rss_mib": round(times["peak_rss_bytes"] / MiB, 1),
        "peak_rss_with_helpers_mib": round(usage.ru_maxrss / 1024, 1),  # the largest of it and its dataset-check processes
        "data_wait": times["data_wait"],
        "cache_files_written": len(list(cache_dir.rglob("*.pt"))) - files_before,
        "storage": times["storage"],
    }


def draw_times(shape: tuple[int, int, int], folder: Path, draws: int) -> dict:
    """Return seconds per training patch drawn from one case of ``shape`` held in memory and read from the disk cache."""
    from monai.data import CacheDataset, Dataset
    from monai.transforms import Compose

    from medseg.data.sampling import SeededSamples
    from medseg.data.transforms import Augmentation, Preprocessing, preprocessing_transforms, training_transforms
    from medseg.data.volume_cache import disk_cache, preprocess_missing, split_at_first_random

    write_case(np.random.default_rng(1), shape, folder / "large_image.nii.gz", folder / "large_label.nii.gz")
    item = {"image": str(folder / "large_image.nii.gz"), "label": str(folder / "large_label.nii.gz"), "name": "large"}
    prep = preprocessing_transforms(Preprocessing(spacing=TARGET_SPACING))
    full = Compose([*prep.transforms, *training_transforms((96, 96, 96), 0.67, Augmentation()).transforms])
    cached, random = split_at_first_random(full)
    disk = disk_cache([item], cached, folder / "preprocessed")
    preprocess_missing(disk)
    ways = {"memory": CacheDataset(disk, random, progress=False, copy_cache=False), "disk": Dataset(disk, random)}
    result = {}
    for name, dataset in ways.items():
        samples = SeededSamples(dataset, seed=0)
        samples[(0, 0, 0)]
        started = time.perf_counter()
        for position in range(draws):
            samples[(0, position, 0)]
        result[name] = round((time.perf_counter() - started) / draws, 4)
    result["volume_mib"] = round(sum(v.numel() * v.element_size() for v in disk[0].values() if hasattr(v, "numel")) / MiB, 1)
    return result


def slug(mode: str) -> str:
    return mode.replace(", ", "-").replace(" ", "-")


def ratio(result: dict, mode: str, key: str, start: str, counts: list[int]) -> float:
    """Return ``key`` at the largest N over the smallest, for ``mode``'s ``start``."""
    return round(result[mode][str(counts[-1])][start][key] / result[mode][str(counts[0])][start][key], 2)


def report_rows(results: dict) -> list[dict]:
    rows = []
    for mode, by_count in results.items():
        for count, starts in by_count.items():
            for start, r in starts.items():
                waits = " / ".join(f"{w['share']:.0%}" for w in r["data_wait"])
                rows.append({
                    "cache": mode, "cases": count, "start": start, "launch to first batch s": r["to_first_batch_s"],
                    "launch to data set up s": r["to_setup_done_s"], "peak RSS MiB": r["peak_rss_mib"],
                    "data wait per epoch": waits,
                    "files preprocessed to disk": r["cache_files_written"], "choice (log line)": r["storage"].split(": ", 1)[-1],
                })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, nargs="+", default=[50, 200, 1000])
    parser.add_argument("--shape", type=int, nargs=3, default=[56, 56, 28], help="voxels per case (at 1.25 x 1.25 x 2.5 mm)")
    parser.add_argument("--large-shape", type=int, nargs=3, default=[288, 288, 144], help="voxels of the case patches are drawn from in part 2")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8, help="training steps per epoch")
    parser.add_argument("--small-memory-gib", type=float, default=0.25, help="memory available to the 'auto, small memory' runs")
    parser.add_argument("--work", type=Path, default=None, help="folder for datasets and caches (default: a temporary one)")
    add_output_option(parser)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--available-gib", type=float, default=None, help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.child:
        sys.exit(child(args.available_gib, [option for option in rest if option != "--"]))
    counts = sorted(args.cases)
    began, load_before = time.time(), os.getloadavg()
    work = args.work or Path(tempfile.mkdtemp(prefix="medseg-scale-"))
    written = time.time()
    roots = write_datasets(work / "data", counts, tuple(args.shape))
    written = round(time.time() - written, 1)
    log = work / "training.log"
    results: dict = {mode: {str(count): {} for count in counts} for mode in MODES}
    for start in ("first", "second"):
        for mode, (cache, memory) in MODES.items():
            for count in counts:
                cache_dir = work / "caches" / slug(mode) / f"n{count}"
                cache_dir.mkdir(parents=True, exist_ok=True)
                options = training_options(roots[count], cache, cache_dir, work / "runs", args.epochs, args.steps)
                available = args.small_memory_gib if memory == "small" else None
                results[mode][str(count)][start] = one_start(options, available, cache_dir, log)
                print(mode, count, start, results[mode][str(count)][start], flush=True)
    draws = draw_times(tuple(args.large_shape), work, draws=10)
    report = {
        "load_average_before_after": [round(v, 2) for v in (*load_before, *os.getloadavg())],
        "seconds": round(time.time() - began), "dataset_writing_s": written,
        "case_shape": args.shape, "spacing_mm": SPACING, "target_spacing_mm": TARGET_SPACING, "epochs": args.epochs, "steps_per_epoch": args.steps,
        "small_memory_gib": args.small_memory_gib, "training_options": training_options(Path("ROOT"), "MODE", Path("CACHE"), Path("OUT"), args.epochs, args.steps),
        "results": results, "patch_draw_s": {"shape": args.large_shape, **draws},
        "targets": {
            "auto_second_start_first_batch_ratio": ratio(results, "auto", "to_first_batch_s", "second", counts),
            "disk_peak_rss_ratio_first_start": ratio(results, "disk", "peak_rss_mib", "first", counts),
            "disk_peak_rss_ratio_second_start": ratio(results, "disk", "peak_rss_mib", "second", counts),
        },
    }
    write_results(args.output, f"Dataset scale: {', '.join(map(str, counts))} cases", report, markdown(report, counts))
    print(json.dumps(report["targets"]))


def markdown(report: dict, counts: list[int]) -> str:
    """Return the report's text: what ran, the table per mode and size, the targets and the patch draw."""
    targets, draws, small, large = report["targets"], report["patch_draw_s"], counts[0], counts[-1]
    met = lambda value: "met" if value <= 2.0 else "not met"  # noqa: E731
    return (
        f"Load average (1, 5, 15 min) before and after: {report['load_average_before_after']} "
        f"(a machine shared with other work: all N run side by side, so compare within one run); {report['seconds']} s in all.\n\n"
        f"Synthetic CT-like cases of {'x'.join(map(str, report['case_shape']))} voxels at {'x'.join(map(str, report['spacing_mm']))} mm, resampled to "
        f"{'x'.join(map(str, report['target_spacing_mm']))} mm: far smaller than real scans, so that {large} cases fit the disk and the run takes minutes "
        f"({report['dataset_writing_s']} s to write them). Each start is its own `python -m medseg.train` process "
        f"(`{shlex.join(report['training_options'])}`: a small UNet, {report['epochs']} epochs of {report['steps_per_epoch']} steps, fp32 on this CPU), "
        "first on an empty cache folder, then again on the same one. `launch to data set up`: interpreter, imports, CLI, the dataset check "
        "(every case read on the first start; the second reads none whose files are unchanged) and the cache; `data wait per epoch`: share of each "
        "epoch's time spent waiting for the next batch, its first step left out; `files preprocessed to disk`: the disk cache's growth in that start. "
        f"`auto, small memory`: `auto` as on a machine with {report['small_memory_gib']} GiB available.\n\n"
        + markdown_rows(report_rows(report["results"]))
        + f"\n\nTargets (issue 23): a second start at {large} cases reaches its first batch within 2x the time at {small} (`cache: auto`, the default): "
        f"{targets['auto_second_start_first_batch_ratio']}x, {met(targets['auto_second_start_first_batch_ratio'])}; peak RSS at {large} cases at most 2x that "
        f"at {small} with the disk cache: {targets['disk_peak_rss_ratio_first_start']}x on the first start, {targets['disk_peak_rss_ratio_second_start']}x on the "
        f"second, {met(max(targets['disk_peak_rss_ratio_first_start'], targets['disk_peak_rss_ratio_second_start']))}.\n\n"
        f"## One patch from a case of {'x'.join(map(str, draws['shape']))} voxels\n\n"
        f"A 96^3 training patch drawn and augmented from one case ({draws['volume_mib']} MiB preprocessed) takes {draws['memory']} s held in memory "
        f"and {draws['disk']} s read from the disk cache (mean of 10 draws).\n"
    )


if __name__ == "__main__":
    main()
