"""One convention for every command (``medseg.command_line``): the same names for the same things, ``-o/--output``
where a command writes, ``-i/--input`` where it reads scans, and the previous release's spellings still working, each
with one notice."""

from __future__ import annotations

import pytest

from medseg.command_line import current_spellings
from medseg.evaluation import command as evaluate
from medseg.exporting import command as export
from medseg.inference import command as infer
from medseg.inference import postprocess_command as postprocess
from medseg.planning import command as plan
from medseg.planning import memory_command as memory
from medseg.training.cli import output_as_training_options, parse_training_options
from medseg.training.command import main as train_main
from tests.helpers.cli import REPO, run_main

WRITING_COMMANDS = {"export": export.main, "infer": infer.main, "evaluate": evaluate.main, "postprocess": postprocess.main, "plan": plan.main, "memory": memory.main}


@pytest.mark.parametrize("command", sorted(WRITING_COMMANDS))
def test_every_command_that_writes_takes_o_and_output(command, capsys):
    code, out, _ = run_main(WRITING_COMMANDS[command], ["--help"], capsys)
    assert code == 0 and "-o OUTPUT, --output OUTPUT" in out


@pytest.mark.parametrize("output", [["-o", "elsewhere"], ["--output=elsewhere"]])
def test_training_writes_its_runs_and_batch_plans_under_o_or_output(output):
    options = parse_training_options(output_as_training_options(["--config", str(REPO / "configs" / "demo.yaml"), *output]))
    assert options["trainer"]["default_root_dir"] == "elsewhere"
    assert options["trainer"]["logger"]["init_args"]["save_dir"] == "elsewhere"


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
OLD_SPELLINGS = [  # (command, its other options, the old spelling, the same in the current one)
    (*INFER, ["--output-format", "both"], ["--output_format", "both"]),
    (*INFER, ["--overlap", "0.5"], ["--sw_overlap", "0.5"]),
    (*INFER, ["--sw-batch-size=2"], ["--sw_batch_size=2"]),
    (*INFER, ["--no-gaussian"], ["--sw_gaussian", "false"]),
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
    assert capsys.readouterr().err == f"medseg: {old[0].split('=')[0]} is deprecated, use {replacement}\n"


def test_an_old_spelling_used_twice_gets_one_notice(capsys):
    assert current_spellings(["--out", "a", "--out=b"], {"--out": ["--output"]}) == ["--output", "a", "--output=b"]
    assert capsys.readouterr().err == "medseg: --out is deprecated, use --output\n"


def test_no_gaussian_blending_is_asked_for_as_training_spells_it():
    args = infer.parse_args([*INFER[1], "--sw_gaussian", "false"])
    assert args.sw_gaussian == "false" and infer.parse_args(INFER[1]).sw_gaussian is None


def test_training_help_says_data_fold_takes_all(capsys):
    code, out, _ = run_main(train_main, ["--help"], capsys)
    help_text = " ".join(out.split())
    assert code == 0 and "--data.fold FOLD the validation fold, 0 to num_folds - 1, or all: train every fold" in help_text
