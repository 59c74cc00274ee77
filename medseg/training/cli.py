"""Train a 3D segmentation model from a YAML config (LightningCLI); the built-in demo phantoms by default.

This module is the training command line: config, precision, resuming, output checks, the run and its summary.

Examples:
    python -m medseg.train                                    # built-in demo phantoms
    python -m medseg.train --config configs/spleen_ct.yaml     # your data
    python -m medseg.train --data.root data/Task09_Spleen      # your data, planned (python -m medseg.plan)
    python -m medseg.train --config configs/demo.yaml --trainer.max_epochs 5 --data.batch_size 4
    python -m medseg.train --config configs/demo.yaml -o runs/demo      # runs under runs/demo (-o/--output, default: runs)
    python -m medseg.train --config configs/demo.yaml --print_config   # resolved config, no training
    python -m medseg.train --config configs/demo.yaml --ckpt_path last  # resume the newest run, in its folder
    python -m medseg.train --config configs/demo.yaml --debug          # an error's traceback instead of one line
    python -m medseg.train --config configs/demo.yaml --data.fold all  # every fold, then the cross-validation summary
    python -m medseg.train --config configs/demo.yaml --data.fold all --retrain   # train again folds trained with other options
"""

from __future__ import annotations

import argparse
import errno
import itertools
import logging
import shutil
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import lightning as L
import torch
import yaml
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.callbacks import ProgressBar as ProgressBarBase
from jsonargparse import Namespace
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.plugins import CheckpointIO

from medseg.command_line import OLD_SPELLINGS_REMOVED_IN, current_spellings
from medseg.data.demo import cache_folder
from medseg.data.formats import read_dataset
from medseg.errors import MedsegError
from medseg.inference.checkpoint import read_weights_only
from medseg.option_values import BATCH_PLAN_CACHE, CPU_PLANNED_NETWORK
from medseg.planning.store import plan_for_training
from medseg.precision import resolve_precision
from medseg.training.batch_planner import BatchSearchCallback
from medseg.training.checkpoint_io import AtomicCheckpointIO
from medseg.training.csv_logger import AppendingCSVLogger
from medseg.training.datamodule import SegmentationDataModule
from medseg.training.final_validation import FinalValidation, validate_on_scan_grids
from medseg.training.module import SegmentationModule
from medseg.training.progress import ProgressBar
from medseg.training.progress_plot import ProgressPlot
from medseg.training.recovery import fit_with_oom_recovery
from medseg.training.speed import SpeedSettings
from medseg.training.throughput import ThroughputMonitor

log = logging.getLogger("medseg")

# the model keys of the previous release, by their current ones: still read for one release, with a notice
OLD_MODEL_KEYS = {
    "sw_overlap": "window.overlap",
    "sw_gaussian": "window.gaussian",
    "sw_batch_size": "window.batch_size",
    "learning_rate": "optimizer.learning_rate",
    "weight_decay": "optimizer.weight_decay",
}


def current_training_spellings(args: list[str] | None) -> list[str]:
    """Return ``args`` (default: the command line) with the previous release's model options (``--model.sw_overlap``)
    spelled as now (``--model.window.overlap``), after a one-line notice for each (``current_spellings``)."""
    old = {f"--model.{key}": [f"--model.{current}"] for key, current in OLD_MODEL_KEYS.items()}
    return current_spellings(sys.argv[1:] if args is None else args, old)


def current_config_keys(content: str) -> str:
    """Return a YAML config (a ``--config`` file: a run's config.yaml, a plan) with the previous release's model keys
    (``model.sw_overlap``) under their current names (``model.window.overlap``), after a one-line notice for each."""
    try:
        config = yaml.safe_load(content)
    except yaml.YAMLError:
        return content  # jsonargparse says what is wrong with it
    model = config.get("model") if isinstance(config, dict) else None
    old = [key for key in OLD_MODEL_KEYS if isinstance(model, dict) and key in model]
    for key in old:
        print(f"medseg: model.{key} is deprecated (removed in {OLD_SPELLINGS_REMOVED_IN}), use model.{OLD_MODEL_KEYS[key]}", file=sys.stderr)
        record, name = OLD_MODEL_KEYS[key].split(".")
        if not isinstance(model.get(record), dict):
            model[record] = {}
        model[record][name] = model.pop(key)
    return yaml.safe_dump(config, sort_keys=False) if old else content


class OneLineErrorParser(LightningArgumentParser):
    """Argument parser whose errors are one line (jsonargparse prints the whole usage otherwise)."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        print(f"medseg: error: {' '.join(str(message).split())} (see --help)", file=sys.stderr)
        sys.exit(2)

    def parse_string(self, content: str, *args, **kwargs) -> Namespace:
        """Parse a config file's text (every ``--config`` comes here) with the previous release's keys read as now."""
        return super().parse_string(current_config_keys(content), *args, **kwargs)


class MedsegCLI(LightningCLI):
    """LightningCLI with the data module's dataset facts linked into the model and a best/last checkpoint."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.add_lightning_class_args(ModelCheckpoint, "last_checkpoint")
        parser.add_lightning_class_args(BatchSearchCallback, "batch_planner")
        parser.add_lightning_class_args(SpeedSettings, "speed")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val_mean_dice",
                "checkpoint.mode": "max",
                "checkpoint.filename": "best-epoch{epoch:03d}-dice{val_mean_dice:.4f}",
                "checkpoint.auto_insert_metric_name": False,
                # the newest state is one file, last.ckpt, rewritten after every epoch (every_n_train_steps adds mid-epoch
                # saves): what resuming starts from. A top-1 checkpoint without a monitor, not save_last, which writes a
                # second, identical file (and with save_top_k 0 writes last.ckpt only when training ends)
                "last_checkpoint.filename": "last",
                "last_checkpoint.enable_version_counter": False,
                "last_checkpoint.save_on_train_epoch_end": True,
                "batch_planner.cache_path": BATCH_PLAN_CACHE,  # in trainer.default_root_dir
                "trainer.precision": "16-mixed",
                "trainer.benchmark": True,  # cuDNN autotuning: training patches all have one shape
                "trainer.max_epochs": 20,
                "trainer.check_val_every_n_epoch": 5,
                "trainer.log_every_n_steps": 10,
                "trainer.default_root_dir": "runs",
                "trainer.logger": {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "runs", "name": "medseg"}},
            }
        )
        parser.add_argument(
            "--ckpt_path",
            type=str | None,
            default=None,
            help="resume from this checkpoint file (loaded weights-only; Lightning's name for it: medseg.infer reads a model with "
            "--checkpoint, and --checkpoint.* here sets the best checkpoint's saving); 'last' resumes the newest run of this logger that "
            "has a last.ckpt. A checkpoint in a run folder of this logger continues that run: its folder, metrics.csv and best checkpoint",
        )
        parser.link_arguments("data.patch_size", "model.patch_size")
        for source, target in [
            ("in_channels", "in_channels"),
            ("num_classes", "out_channels"),
            ("class_names", "class_names"),
            ("channel_names", "channel_names"),
            ("preprocessing", "preprocessing"),
        ]:
            compute = (lambda p: p.to_dict()) if source == "preprocessing" else None
            parser.link_arguments(f"data.{source}", f"model.{target}", compute_fn=compute, apply_on="instantiate")

    def instantiate_trainer(self, **kwargs) -> L.Trainer:
        """Build the trainer with medseg's progress bar (``ProgressBar``) unless the bar is off or another one is given,
        and checkpoints written beside their target (``AtomicCheckpointIO``) unless another CheckpointIO is given."""
        config = self.config_init["trainer"]
        callbacks = list(config.get("callbacks") or [])
        if config.get("enable_progress_bar") is not False and not any(isinstance(c, ProgressBarBase) for c in callbacks):
            kwargs.setdefault("callbacks", [*callbacks, ProgressBar()])
        plugins = config.get("plugins")
        plugins = [] if plugins is None else list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            kwargs.setdefault("plugins", [*plugins, AtomicCheckpointIO()])
        if config.get("logger") and not any(isinstance(c, LearningRateMonitor) for c in callbacks):
            kwargs["callbacks"] = [*kwargs.get("callbacks", callbacks), LearningRateMonitor("epoch")]  # lr-AdamW: progress.png's panel
        return super().instantiate_trainer(**kwargs)

    def before_instantiate_classes(self) -> None:
        trainer = self.config["trainer"]
        accelerator = str(trainer["accelerator"])
        on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
        trainer["precision"], reason = resolve_precision(trainer["precision"], "cuda" if on_gpu else "cpu")
        log.info(reason)
        if trainer.get("deterministic") and trainer.get("benchmark"):
            # cuDNN autotuning (on by default here) picks algorithms by timing, which defeats deterministic=True
            trainer["benchmark"] = False
            log.info("deterministic training: cuDNN autotuning (trainer.benchmark) turned off")
        logger = trainer["logger"]
        if isinstance(logger, Namespace) and logger.get("class_path") in LIGHTNING_CSV_LOGGERS:
            logger["class_path"] = f"{AppendingCSVLogger.__module__}.{AppendingCSVLogger.__name__}"  # same arguments
        self.config["ckpt_path"], run_folder = resume_checkpoint(trainer, self.config["ckpt_path"])
        if run_folder is not None and (run_folder / CONFIG_FILE).exists():
            self.save_config_kwargs = {**self.save_config_kwargs, "config_filename": resume_config_name(run_folder)}


class OptionsOnlyCLI(MedsegCLI):
    """The training command line parsed and checked as training parses it, with nothing built, resumed or seeded."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **{**kwargs, "seed_everything_default": False})

    def before_instantiate_classes(self) -> None:
        pass

    def instantiate_classes(self) -> None:
        pass


# Lightning's CSVLogger, as a config names it: a run resumed in its folder would delete its metrics.csv
LIGHTNING_CSV_LOGGERS = {f"{CSVLogger.__module__}.CSVLogger", "lightning.pytorch.loggers.CSVLogger"}
# SaveConfigCallback's file in the run folder: the options the run started with
CONFIG_FILE = "config.yaml"


def logger_runs(trainer_config) -> Path | None:
    """Return the folder of the configured logger's run folders (``save_dir/name``), or None for a logger without one."""
    logger = trainer_config["logger"]  # also True, False, None or a list of loggers
    args = logger["init_args"] if isinstance(logger, Namespace) and "init_args" in logger else None
    if args is None or "save_dir" not in args or "name" not in args:
        return None
    return Path(args["save_dir"]) / (args["name"] or "")


def resume_checkpoint(trainer_config, ckpt_path: str | None) -> tuple[str | None, Path | None]:
    """Return the checkpoint to resume from and the run folder it continues (None: a new one), before anything is built.

    ``last`` is the newest last.ckpt of the configured logger's runs (None, a fresh run, where there is none). A
    checkpoint inside one of those run folders makes this run log into that folder: Lightning's checkpoint callbacks
    restore their best score and path only there. The checkpoint is read here, weights-only, so that a missing,
    truncated or unsafe file is one line before training starts; a URL is refused (nothing is downloaded while training).
    Lightning reads it again inside ``fit``, but only after the batch planner's trials (minutes on a GPU) and with its
    own errors; this read costs about 0.13 s for a 96 MB checkpoint (2-core EPYC, page cache), so it stays.
    """
    if ckpt_path is None:
        return None, None
    if "://" in ckpt_path:
        raise MedsegError(f"--ckpt_path {ckpt_path} is a URL: medseg downloads nothing while training; download it and pass the file")
    runs = logger_runs(trainer_config)
    if ckpt_path == "last":
        if runs is None:
            raise MedsegError("--ckpt_path last needs a logger with save_dir and name (e.g. the default CSVLogger); pass a checkpoint path instead")
        candidates = sorted(runs.glob("version_*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
        if not candidates:
            log.info(f"no last.ckpt under {runs}: starting a new run")
            return None, None
        checkpoint = candidates[-1]
    else:
        checkpoint = Path(ckpt_path)
    read_weights_only(checkpoint)
    run_folder = checkpoint.parent.parent
    if runs is None or checkpoint.parent.name != "checkpoints" or run_folder.parent.resolve() != runs.resolve():
        log.info(f"resuming from {checkpoint}, in a new run folder (the checkpoint is not in a run folder of this logger)")
        return str(checkpoint), None
    trainer_config["logger"]["init_args"]["version"] = run_folder.name
    log.info(f"resuming from {checkpoint}")
    return str(checkpoint), run_folder


def resume_config_name(run_folder: Path) -> str:
    """Return the first free ``config-resume-N.yaml`` name of a run folder: a resumed run records its own options
    there and keeps the run's config.yaml (resuming with other options, e.g. more epochs, is allowed)."""
    return next(name for n in itertools.count(1) if not (run_folder / (name := f"config-resume-{n}.yaml")).exists())


NO_VALIDATION_BATCHES = "(no validation batches: --trainer.limit_val_batches 0?)"


def print_summary(result: "TrainResult", class_names: list[str]) -> None:
    """Print the final validation's Dice per class and the mean (else the training grid's), and where the outputs are."""
    validated = "the best checkpoint" if result.best_checkpoint else "the last weights (no validation ran during training, so there is no best checkpoint)"
    lines = [""]
    if result.final_validation:
        lines += result.final_validation.summary_lines(validated)
        if result.metrics:
            lines.append(f"For comparison, per-epoch validation (val_* in metrics.csv) scores on the training grid: mean Dice {result.metrics['val_mean_dice']:.4f} for the same weights")
        else:
            lines.append(f"No per-epoch validation ran {NO_VALIDATION_BATCHES}")
    elif result.metrics:
        width = max(len(name) for name in class_names)
        lines += [f"Validation Dice of {validated}, on the training grid (no checkpoint was written to validate on the scans' own grids):"]
        lines += [f"  {name:<{width}}  {result.metrics.get(f'val_dice_{name}', float('nan')):.4f}" for name in class_names[1:]]
        lines += [f"  {'mean':<{width}}  {result.metrics['val_mean_dice']:.4f}  (foreground classes)"]
    else:
        lines += [f"No validation ran {NO_VALIDATION_BATCHES} and no checkpoint was written, so there is no Dice to show."]
    best = result.best_checkpoint or f"none (medseg.infer --checkpoint {result.log_dir} takes the last checkpoint instead)"
    lines += [f"Best checkpoint: {best}", f"Last checkpoint: {result.last_checkpoint or 'none'}", f"Logs and config: {result.log_dir}"]
    print("\n".join(lines), flush=True)


def checkpoint_bytes(model: SegmentationModule) -> int:
    """Return the disk space the checkpoints need: best and last.ckpt, plus the one being written beside them before
    it replaces its old file (atomic writes); each holds the weights and two AdamW moments."""
    parameter_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    return 3 * 3 * parameter_bytes + 64 * 2**20


def check_output_dir(folder: Path, required_bytes: int) -> None:
    """Fail before training, not at the first checkpoint, when the run folder is unwritable or the disk nearly full."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise MedsegError(f"{folder}: output folder is not writable ({err.strerror or err})") from None
    free = shutil.disk_usage(folder).free
    if free < required_bytes:
        raise MedsegError(f"{folder}: only {free / 2**20:.0f} MiB free on disk, checkpoints need about {required_bytes / 2**20:.0f} MiB")


@dataclass
class TrainResult:
    """What a training run produced: the validated weights' metrics (empty: nothing was validated) and where things are
    (None: not written)."""

    metrics: dict[str, float]
    best_checkpoint: Path | None
    last_checkpoint: Path | None
    log_dir: Path
    model: SegmentationModule  # holds the validated weights
    final_validation: FinalValidation | None = None  # on the scans' own grids; rank 0 only, None where no checkpoint was written


def build_cli(args: list[str] | None = None, cli_class: type[MedsegCLI] = MedsegCLI) -> MedsegCLI:
    """Return the parsed CLI with model, data module and trainer built (by ``MedsegCLI``), without running anything."""
    with warnings.catch_warnings():
        # with_plan hands the command line plus the plan's --config as ``args``: meant, so not worth a warning
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
        return cli_class(
            SegmentationModule,
            SegmentationDataModule,
            run=False,
            args=current_training_spellings(args),
            parser_class=OneLineErrorParser,
            seed_everything_default=0,
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"description": __doc__, "allow_abbrev": False},
            trainer_defaults={"callbacks": [ThroughputMonitor(), ProgressPlot()]},  # patches/s, data wait, progress.png, in every run
        )


def parse_training_options(args: list[str]) -> dict[str, Any]:
    """Return every training option as plain data, as ``python -m medseg.train args`` resolves them (config files,
    overrides, defaults), for commands that need no Trainer. An unknown option or a bad value is refused as training
    refuses it: one line, exit code 2. Nothing is built: the parse takes about 0.1 s."""
    return build_cli(args, OptionsOnlyCLI).config.as_dict()


def with_plan(args: list[str] | None, network: str | None = None, preset: str | None = None) -> list[str] | None:
    """Return ``args`` with the dataset's plan as ``--config`` in front when a dataset is given without a config or a patch size.

    The plan is the cached one for this dataset (unchanged files), GPU and ``network``/``preset`` (train's --network
    and --preset, as in ``python -m medseg.plan``), else made now. Neither given, training on the CPU plans
    ``CPU_PLANNED_NETWORK`` (MONAI's tutorial UNet, far faster there), on a GPU the planner's default (nnU-Net's
    class). Other options given on the command line still override the plan's values; a patch size given by hand
    means the configuration is chosen by hand, and nothing is planned (then a network or preset asked for is refused:
    nothing would honour it).
    """
    argv = sys.argv[1:] if args is None else list(args)
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--config")
    parser.add_argument("--data.root", dest="root")
    parser.add_argument("--data.cache_dir", dest="cache_dir")
    parser.add_argument("--data.patch_size", dest="patch_size")
    known, _ = parser.parse_known_args(argv)
    if known.config or known.patch_size or not known.root:
        if network or preset:
            raise MedsegError(f"--{'network' if network else 'preset'} chooses the plan of a dataset given by --data.root without --config"
                              " or --data.patch_size: leave it out, or plan with python -m medseg.plan and train with its plan.yaml")
        return args
    argv = current_training_spellings(argv)  # one notice for an old spelling, not one per parse
    options = parse_training_options(argv)  # a mistyped option is refused before planning, not after
    if network is None and preset is None and (str(options["trainer"]["accelerator"]) == "cpu" or not torch.cuda.is_available()):
        network = CPU_PLANNED_NETWORK
        log.info(f"training on the CPU: planning the {network} network, which learns far more per CPU second there than "
                 "nnU-Net's class (docs/explanation/networks.md); --network plain plans nnU-Net's class")
    stored = plan_for_training(read_dataset(known.root), cache_folder(known.cache_dir), network=network, preset=preset)
    chosen = stored.plan.chosen
    log.info(
        f"{'using the cached plan' if stored.cached else 'planned'} {stored.config_path} ({stored.plan.memory_source},"
        f" {stored.plan.capacity_bytes / 2**30:g} GiB): patch {chosen.patch_size}, batch {chosen.batch_size}, {chosen.precision}"
    )
    return ["--config", str(stored.config_path), *argv]


def run(args: list[str] | None = None, network: str | None = None, preset: str | None = None) -> TrainResult:
    """Train as `args` (default: the command line) say, validate the best checkpoint (else the last weights) and return the results.

    A dataset (``--data.root``) without ``--config`` trains with its plan (``with_plan``, for ``network`` and ``preset``). A process group the run
    started (DDP) is destroyed before it returns (``end_process_group``).
    """
    group_was_open = process_group_open()
    cli = build_cli(with_plan(args, network, preset))
    trainer, model, datamodule = cli.trainer, cli.model, cli.datamodule
    best, last = cli.config_init["checkpoint"], cli.config_init["last_checkpoint"]
    if trainer.is_global_zero:
        check_output_dir(Path(trainer.log_dir), checkpoint_bytes(model))
    try:
        # an out-of-memory error mid-training drops to the next smaller verified batch and resumes from last.ckpt
        trainer = fit_with_oom_recovery(lambda: cli.trainer, model, datamodule, ckpt_path=cli.config["ckpt_path"])
    except OSError as err:
        if err.errno != errno.ENOSPC:
            raise
        raise MedsegError(f"disk full while writing {err.filename or trainer.log_dir}; earlier checkpoints are intact (written atomically)") from None
    # read the paths before validate(): restoring the best checkpoint also restores the callbacks' state
    best_path = Path(best.best_model_path) if best.best_model_path else None
    last_path = Path(last.best_model_path) if last.best_model_path else None  # its top-1 file: last.ckpt
    # a run that ended before its first validation (short, max_time, Ctrl-C) validates its last checkpoint
    # this run's own checkpoint holds plain data only (tensors, numbers, strings): loaded weights-only
    validated = best_path or last_path
    results = trainer.validate(model, datamodule=datamodule, ckpt_path=validated, verbose=False, weights_only=True)
    metrics = {k: float(v) for k, v in results[0].items()} if results else {}  # none without validation batches
    result = TrainResult(metrics, best_path, last_path, Path(trainer.log_dir), model)  # log_dir is a broadcast: before the group ends
    if trainer.is_global_zero:
        if validated:
            result.final_validation = validate_on_scan_grids(validated, datamodule.val_cases, datamodule.class_names, result.log_dir)
        print_summary(result, datamodule.class_names)
    if not group_was_open:
        end_process_group()
    return result


def process_group_open() -> bool:
    """Return whether a default process group exists (False where torch has no distributed support)."""
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def end_process_group() -> None:
    """Destroy the process group, if one is open, once every rank is past its last collective.

    Lightning leaves a gloo group alive at exit (it registers an exit handler for NCCL's only). Gloo's worker thread
    frees a collective's tensors after the caller's wait returned, and needs the GIL for their Python objects: when
    the interpreter starts to finalize meanwhile, the thread is ended inside a C++ destructor, and the process aborts
    after a run that succeeded ("terminate called without an active exception", SIGABRT). Destroying the group joins
    those threads.
    """
    if process_group_open():
        torch.distributed.destroy_process_group()
