"""`python -m medseg.train`: train a segmentation model from a YAML config (LightningCLI), demo data by default.

Examples:
    python -m medseg.train                                    # built-in demo phantoms
    python -m medseg.train --config configs/spleen_ct.yaml     # your data
    python -m medseg.train --data.root data/Task09_Spleen      # your data with its plan (python -m medseg.plan)
    python -m medseg.train --data.root data/Task09_Spleen --network tutorial   # ... planned for MONAI's tutorial UNet
    python -m medseg.train --config configs/demo.yaml --trainer.max_epochs 5 --data.batch_size 4
    python -m medseg.train --config configs/demo.yaml -o runs/demo     # runs, checkpoints and batch plans under runs/demo
    python -m medseg.train --config configs/demo.yaml --print_config   # resolved config, no training
    python -m medseg.train --config configs/demo.yaml --data.fold all  # every fold, then the cross-validation summary
    python -m medseg.train --config configs/demo.yaml --data.fold all --retrain   # train again folds trained with other options
"""

from __future__ import annotations

import argparse

from medseg.command_line import CommandParser
from medseg.errors import run_command
from medseg.planning.command import add_network_options

__all__ = ["ALL_FOLDS", "CONFIG_GROUPS", "main", "parse_args", "train_parser"]

ALL_FOLDS = "all"  # --data.fold all: cross-validation (medseg.training.cross_validation)

# LightningCLI's config groups (``--<group>.<key>``), one line each in --help; --help_all lists their keys and defaults
CONFIG_GROUPS = {
    "data": "dataset, preprocessing, patches, folds, caching, augmentation",
    "model": "network, loss, optimizer, window settings for validation",
    "trainer": "Lightning's Trainer: epochs, devices, precision, logger, default_root_dir",
    "checkpoint": "the best checkpoint (Lightning's ModelCheckpoint)",
    "last_checkpoint": "last.ckpt, the newest state, rewritten every epoch: what --ckpt_path last resumes",
    "batch_planner": "the batch size planned for the GPU's memory, gradient accumulation",
    "speed": "channels-last weights and torch.compile",
}


def config_help() -> str:
    """Return what --help says about the options LightningCLI reads, and where their keys and defaults are listed."""
    width = max(map(len, CONFIG_GROUPS))
    return "\n".join([
        "LightningCLI reads every other option: -c/--config FILE (a YAML config; options after it override it),",
        "--print_config, --ckpt_path PATH (resume; 'last': the newest run), --seed_everything N, and every config key",
        "as --<group>.<key> VALUE. The groups:",
        *(f"  {group:<{width}}  {what}" for group, what in CONFIG_GROUPS.items()),
        "Every key and its default: docs/reference/config.md, --print_config (the resolved config, no training) and",
        "--help_all (LightningCLI's full help).",
        "-o/--output and --data.fold K apply after the config keys, wherever they are written: they win over a config.",
    ])


def train_parser() -> CommandParser:
    """Return train's own parser: the options that are medseg's rather than a config key's. It loads no torch."""
    parser = CommandParser("python -m medseg.train", __doc__, config_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--help_all", action="store_true", help="LightningCLI's full help: every config key with its default, and exit")
    parser.add_argument("-o", "--output",
                        help="where runs go: the trainer's default_root_dir (batch plans) and the logger's save_dir (runs, checkpoints, metrics)")
    parser.add_argument("--data.fold", dest="fold",
                        help=f"the validation fold, 0 to num_folds - 1, or {ALL_FOLDS}: train every fold, then the cross-validation summary")
    parser.add_argument("--retrain", action="store_true",
                        help=f"with --data.fold {ALL_FOLDS}: train again the folds trained with other options (their runs are moved aside)")
    add_network_options(parser)  # what with_plan plans for --data.root without a config
    return parser


def parse_args(args: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """Return train's own options, and the options for LightningCLI: every other one, in order, then the training
    options ``-o`` and ``--data.fold K`` stand for (so they win over a config given anywhere on the line)."""
    command = train_parser()
    options, training_args = command.parse_known_args(args)
    if options.output == "":
        command.error("-o/--output needs a folder")
    if options.retrain and options.fold != ALL_FOLDS:
        command.error(f"--retrain applies to --data.fold {ALL_FOLDS} only")
    if options.output is not None:
        training_args += [f"--trainer.default_root_dir={options.output}", f"--trainer.logger.init_args.save_dir={options.output}"]
    if options.fold not in (None, ALL_FOLDS):
        training_args.append(f"--data.fold={options.fold}")
    return options, training_args


def train(args: list[str]) -> None:
    """Train as ``args`` say: one fold, or every fold and the cross-validation summary (``--data.fold all``)."""
    options, training_args = parse_args(args)
    # torch, Lightning and MONAI load here, not at the top, so that --help answers without them
    from medseg.training.cli import current_training_spellings

    training_args = current_training_spellings(training_args)  # folds read the current spellings: no notice each
    if options.help_all:
        from medseg.training.cli import parse_training_options

        parse_training_options([*training_args, "--help"])  # prints LightningCLI's help and exits
    elif options.fold == ALL_FOLDS:
        from medseg.training.cross_validation import run_cross_validation

        run_cross_validation(training_args, retrain=options.retrain, network=options.network, preset=options.preset)
    else:
        from medseg.training.cli import run

        run(training_args, network=options.network, preset=options.preset)


def main(argv: list[str] | None = None) -> int:
    """Entry point (``argv``: the options, default ``sys.argv[1:]``): return the exit code (``run_command``); a bad
    option exits with code 2."""
    return run_command(train, argv)
