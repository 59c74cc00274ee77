"""Every command's one error path: a user error or a failed file operation is one line and exit code 1, ``--debug``
shows the traceback instead, and an unknown option is refused."""

from __future__ import annotations

import errno
import importlib
import tomllib

import pytest

from medseg.errors import MedsegError, run_command
from tests.helpers.cli import REPO, run_main

COMMANDS = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]


def _entry_point(script: str):
    module, function = COMMANDS[script].split(":")
    return getattr(importlib.import_module(module), function)


def _failing_options(script: str, tmp_path) -> list[str]:
    """Options that end ``script`` with a user error (a path that does not exist) before any real work."""
    missing = str(tmp_path / "missing")
    return {
        "medseg-train": [f"--data.root={missing}"],
        "medseg-plan": [f"--data.root={missing}"],
        "medseg-memory": [f"--data.root={missing}"],
        "medseg-infer": ["--checkpoint", f"{missing}.ckpt", "--input", missing, "--output", str(tmp_path / "out")],
        "medseg-export": ["--checkpoint", f"{missing}.ckpt", "--output", str(tmp_path / "export")],
        "medseg-evaluate": ["--pred", missing, "--gt", missing],
        "medseg-postprocess": ["--pred", missing, "--gt", missing],
    }[script]


@pytest.mark.parametrize("script", sorted(COMMANDS))
def test_every_command_shows_a_user_error_as_one_line_and_exit_code_1(script, tmp_path, capsys):
    code, _, err = run_main(_entry_point(script), _failing_options(script, tmp_path), capsys)
    assert code == 1
    assert err.strip().splitlines()[-1].startswith("medseg: error: ") and str(tmp_path / "missing") in err
    assert "Traceback" not in err


@pytest.mark.parametrize("script", sorted(COMMANDS))
def test_every_command_raises_with_its_traceback_under_debug(script, tmp_path):
    with pytest.raises(MedsegError, match="missing"):
        _entry_point(script)([*_failing_options(script, tmp_path), "--debug"])


@pytest.mark.parametrize("script", sorted(COMMANDS))
def test_every_command_refuses_an_unknown_option(script, tmp_path, capsys):
    code, out, err = run_main(_entry_point(script), [*_failing_options(script, tmp_path), "--no-such-option=1"], capsys)
    assert code == 2 and "--no-such-option" in err and "Traceback" not in err


ABBREVIATED = {  # the start of one of each command's own options: argparse would take it for that option
    "medseg-train": "--trainer.max_epoch=1",
    "medseg-plan": "--capacity_gi=8",
    "medseg-memory": "--capacity_gi=8",
    "medseg-infer": "--window.overla=0.5",
    "medseg-export": "--toleranc=0.1",
    "medseg-evaluate": "--outpu=x.csv",
    "medseg-postprocess": "--outpu=x.json",
}


@pytest.mark.parametrize("script", sorted(COMMANDS))
def test_every_command_refuses_an_abbreviated_option(script, tmp_path, capsys):
    code, _, err = run_main(_entry_point(script), [*_failing_options(script, tmp_path), ABBREVIATED[script]], capsys)
    assert code == 2 and ABBREVIATED[script].split("=")[0] in err and "Traceback" not in err


def test_training_refuses_a_mistyped_option_before_planning_the_dataset(demo_root, monkeypatch, capsys):
    from medseg.training import cli
    from medseg.training.command import main

    monkeypatch.setattr(cli, "plan_for_training", lambda *args: pytest.fail("planned before checking the options"))
    code, _, err = run_main(main, [f"--data.root={demo_root}", "--trainer.max_epocs=5"], capsys)
    assert code == 2 and "--trainer.max_epocs" in err


@pytest.mark.parametrize("script", ["medseg-plan", "medseg-memory"])
def test_a_mistyped_training_option_is_refused_by_the_commands_that_read_them(script, tmp_path, capsys):
    # medseg-plan --data.rooot planned the built-in demo and exited 0 (issue 32)
    code, out, err = run_main(_entry_point(script), [f"--data.rooot={tmp_path}", "--output", str(tmp_path / "out")], capsys)
    assert code == 2
    assert err.strip().count("\n") == 0 and "--data.rooot" in err
    assert not (tmp_path / "out").exists()


def test_a_failed_file_operation_is_one_line_naming_the_file(tmp_path, capsys):
    def fill_the_disk(args: list[str]) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "recipe.json"))

    code, _, err = run_main(lambda argv: run_command(fill_the_disk, argv), [], capsys)
    assert code == 1
    assert err.strip() == (
        f"medseg: error: {tmp_path / 'recipe.json'}: No space left on device: free some disk space (or choose another disk) "
        "and rerun (--debug shows the traceback)"
    )


def test_run_command_returns_the_commands_own_exit_code_and_passes_the_options_without_debug():
    seen = []
    assert run_command(lambda args: seen.append(args) or 3, ["--a", "--debug", "b"]) == 3
    assert seen == [["--a", "b"]]
    assert run_command(lambda args: object(), []) == 0  # a result, not an exit code
