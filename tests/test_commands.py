"""One convention for every command (``medseg.command_line``): the same names for the same things, ``-o/--output``
where a command writes, ``-i/--input`` where it reads scans, and the previous release's spellings still working, each
with one notice."""

from __future__ import annotations

import pytest

from medseg.command_line import OLD_SPELLINGS_REMOVED_IN, current_spellings
from medseg.evaluation import command as evaluate
from medseg.exporting import command as export
from medseg.inference import command as infer
from medseg.inference import postprocess_command as postprocess
from medseg.planning import command as plan
from medseg.planning import memory_command as memory
from medseg.training import command as train
from medseg.training.cli import OptionsOnlyCLI, build_cli, parse_training_options
from tests.helpers.cli import REPO, run_main

WRITING_COMMANDS = {"export": export.main, "infer": infer.main, "evaluate": evaluate.main, "postprocess": postprocess.main, "plan": plan.main, "memory": memory.main}
COMMANDS = {"train": train.main, **WRITING_COMMANDS}


@pytest.mark.parametrize("command", sorted(WRITING_COMMANDS))
def test_every_command_that_writes_takes_o_and_output(command, capsys):
    code, out, _ = run_main(WRITING_COMMANDS[command], ["--help"], capsys)
    assert code == 0 and "-o OUTPUT, --output OUTPUT" in out


def training_options(args: list[str]) -> dict:
    """Return the training options ``python -m medseg.train args`` trains with, as plain data."""
    return parse_training_options(train.parse_args(args)[1])


@pytest.mark.parametrize("output", [["-o", "elsewhere"], ["--output=elsewhere"]])
def test_training_writes_its_runs_and_batch_plans_under_o_or_output(output):
    options = training_options(["--config", str(REPO / "configs" / "demo.yaml"), *output])
    assert options["trainer"]["default_root_dir"] == "elsewhere"
    assert options["trainer"]["logger"]["init_args"]["save_dir"] == "elsewhere"


def test_o_and_data_fold_win_over_a_config_given_after_them(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("trainer:\n  default_root_dir: from_config\ndata:\n  fold: 2\n")
    options = training_options(["-o", "elsewhere", "--data.fold", "1", "--config", str(config), "--data.num_folds=3"])
    assert options["trainer"]["default_root_dir"] == "elsewhere" and options["data"]["fold"] == 1 and options["data"]["num_folds"] == 3


@pytest.mark.parametrize("fold", [["--data.fold", "all"], ["--data.fold=all"]])
def test_data_fold_all_asks_for_cross_validation_either_way_of_writing_it(fold):
    options, training_args = train.parse_args(["--config", "c.yaml", *fold, "--retrain"])
    assert options.fold == train.ALL_FOLDS and options.retrain and training_args == ["--config", "c.yaml"]


def test_one_fold_is_a_training_option():
    options, training_args = train.parse_args(["--data.fold", "1", "--config", "c.yaml"])
    assert options.fold == "1" and training_args == ["--config", "c.yaml", "--data.fold=1"]


def test_retrain_without_all_folds_is_refused(capsys):
    code, _, err = run_main(train.main, ["--retrain"], capsys)
    assert code == 2 and "--retrain applies to --data.fold all only" in err


def test_inference_reads_scans_with_i_and_input(capsys):
    code, out, _ = run_main(infer.main, ["--help"], capsys)
    assert code == 0 and "-i INPUT, --input INPUT" in out


def test_short_and_long_names_mean_the_same_option():
    short = infer.parse_args(["--checkpoint", "m.ckpt", "-i", "scans", "-o", "out"])
    long = infer.parse_args(["--checkpoint", "m.ckpt", "--input", "scans", "--output", "out"])
    assert short == long and (short.input, short.output) == ("scans", "out")


INFER = (infer.parse_args, ["--checkpoint", "m.ckpt", "--input", "scans", "--output", "out"])
PLAN = (lambda args: plan.parse_args(args)[0], [])
MEMORY = (lambda args: memory.parse_args(args)[0], [])
TRAIN = (parse_training_options, [])
OLD_SPELLINGS = [  # (command, its other options, the old spelling, the same in the current one)
    (*INFER, ["--output-format", "both"], ["--output_format", "both"]),
    (*INFER, ["--overlap", "0.5"], ["--window.overlap", "0.5"]),
    (*INFER, ["--sw_overlap", "0.5"], ["--window.overlap", "0.5"]),
    (*INFER, ["--sw-batch-size=2"], ["--window.batch_size=2"]),
    (*INFER, ["--sw_batch_size=2"], ["--window.batch_size=2"]),
    (*INFER, ["--sw_gaussian", "false"], ["--window.gaussian", "false"]),
    (*INFER, ["--no-gaussian"], ["--window.gaussian", "false"]),
    (*TRAIN, ["--model.sw_overlap", "0.5"], ["--model.window.overlap", "0.5"]),
    (*TRAIN, ["--model.sw_batch_size=2"], ["--model.window.batch_size=2"]),
    (*TRAIN, ["--model.learning_rate", "0.01"], ["--model.optimizer.learning_rate", "0.01"]),
    (*INFER, ["--no-postprocessing"], ["--no_postprocessing"]),
    (*PLAN, ["--out", "plans"], ["--output", "plans"]),
    (*PLAN, ["--budget-fraction", "0.5"], ["--budget_fraction", "0.5"]),
    (*PLAN, ["--capacity-gib=4"], ["--capacity_gib=4"]),
    (*MEMORY, ["--out", "report"], ["--output", "report"]),
    (*MEMORY, ["--budget-fraction", "0.5"], ["--budget_fraction", "0.5"]),
    (*MEMORY, ["--capacity-gib", "4"], ["--capacity_gib", "4"]),
    (*MEMORY, ["--cache", "plans.json"], ["--cache_path", "plans.json"]),
]


@pytest.mark.parametrize("parse, others, old, new", OLD_SPELLINGS, ids=[case[2][0].split("=")[0] for case in OLD_SPELLINGS])
def test_an_old_spelling_still_works_with_one_deprecation_notice(parse, others, old, new, capsys):
    expected = parse([*others, *new])
    assert capsys.readouterr().err == ""
    assert parse([*others, *old]) == expected
    replacement = " ".join(new) if old == ["--no-gaussian"] else new[0].split("=")[0]  # a flag's replacement is an option and its value
    assert capsys.readouterr().err == f"medseg: {old[0].split('=')[0]} is deprecated (removed in {OLD_SPELLINGS_REMOVED_IN}), use {replacement}\n"


def test_an_old_spelling_used_twice_gets_one_notice(capsys):
    assert current_spellings(["--out", "a", "--out=b"], {"--out": ["--output"]}) == ["--output", "a", "--output=b"]
    assert capsys.readouterr().err == "medseg: --out is deprecated (removed in 0.3.0), use --output\n"


def test_inference_names_the_window_settings_as_training_does_less_model():
    window = ["--window.overlap", "0.5", "--window.gaussian", "false", "--window.batch_size", "2"]
    args = infer.parse_args([*INFER[1], *window])
    trained = parse_training_options([arg.replace("--window.", "--model.window.") for arg in window])["model"]["window"]
    assert trained == {"overlap": args.overlap, "gaussian": args.gaussian == "true", "batch_size": args.batch_size} == {"overlap": 0.5, "gaussian": False, "batch_size": 2}
    assert (infer.parse_args(INFER[1]).gaussian, infer.parse_args(INFER[1]).overlap) == (None, None)  # None: the recipe's


def test_training_help_says_data_fold_takes_all(capsys):
    code, out, _ = run_main(train.main, ["--help"], capsys)
    help_text = " ".join(out.split())
    assert code == 0 and "--data.fold FOLD the validation fold, 0 to num_folds - 1, or all: train every fold" in help_text


def test_training_help_names_the_config_groups_and_where_their_keys_are_listed(capsys):
    code, out, _ = run_main(train.main, ["--help"], capsys)
    assert code == 0 and all(f"\n  {group} " in out for group in train.CONFIG_GROUPS)
    assert all(where in out for where in ("docs/reference/config.md", "--print_config", "--help_all"))


def test_the_config_groups_training_help_names_are_those_of_the_training_parser():
    groups = {group for group in build_cli([], OptionsOnlyCLI).parser.groups if "." not in group}
    # LightningCLI's own optimizer and lr_scheduler groups replace medseg's optimizer (model.*): not advertised
    assert set(train.CONFIG_GROUPS) == groups - {"optimizer", "lr_scheduler"}


def test_help_all_is_lightningclis_full_help_with_every_config_key(capsys):
    code, out, _ = run_main(train.main, ["--help_all"], capsys)
    assert code == 0 and "--data.root" in out and "--trainer.max_epochs" in out and "--ckpt_path" in out


MISSPELT = {  # a command's required options, and a misspelling of one of its options
    "train": ([], "--data.rooot"),
    "export": (["--checkpoint", "m.ckpt", "-o", "out"], "--tolerence"),
    "infer": (["--checkpoint", "m.ckpt", "-i", "scans", "-o", "out"], "--window.overlapp"),
    "evaluate": (["--pred", "pred", "--gt", "gt"], "--outptu"),
    "postprocess": (["--pred", "pred", "--gt", "gt"], "--outptu"),
    "plan": ([], "--data.rooot"),
    "memory": ([], "--capacity_gb"),
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_misspelt_option_fails_with_exit_code_2_naming_it(command, capsys):
    required, misspelt = MISSPELT[command]
    code, _, err = run_main(COMMANDS[command], [*required, misspelt, "1"], capsys)
    assert code == 2 and misspelt in err


def test_a_config_of_the_previous_release_still_reads_with_one_notice_per_old_key(tmp_path, capsys):
    config = tmp_path / "config.yaml"  # a run's saved config.yaml, or a plan, of the previous release
    config.write_text("model:\n  sw_overlap: 0.5\n  learning_rate: 0.01\n  window:\n    gaussian: false\n")
    model = parse_training_options(["--config", str(config)])["model"]
    assert model["window"] == {"overlap": 0.5, "gaussian": False, "batch_size": 4} and model["optimizer"]["learning_rate"] == 0.01
    assert capsys.readouterr().err.splitlines() == [
        "medseg: model.sw_overlap is deprecated (removed in 0.3.0), use model.window.overlap",
        "medseg: model.learning_rate is deprecated (removed in 0.3.0), use model.optimizer.learning_rate",
    ]
