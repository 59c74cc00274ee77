"""The documentation a newcomer follows: its links lead somewhere, the options the command reference names exist, and
the README stays a door (at most 10 KB)."""

from __future__ import annotations

import argparse
import importlib
import re
from pathlib import Path

import pytest

from medseg.command_line import OLD_SPELLINGS_REMOVED_IN
from medseg.errors import DEBUG_OPTION
from medseg.training import command as train
from medseg.training.cli import OLD_MODEL_KEYS, OptionsOnlyCLI, build_cli

REPO = Path(__file__).resolve().parents[1]
DOCUMENTS = [REPO / "README.md", REPO / "benchmarks" / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
COMMANDS_PAGE = REPO / "docs" / "reference" / "commands.md"
CONFIG_PAGE = REPO / "docs" / "reference" / "config.md"
# the argparse commands and the module whose main() parses their options; train is LightningCLI's
ARGPARSE_COMMANDS = {"infer": "medseg.inference.command", "evaluate": "medseg.evaluation.command",
                     "postprocess": "medseg.inference.postprocess_command", "plan": "medseg.planning.command",
                     "memory": "medseg.planning.memory_command", "export": "medseg.exporting.command"}
# commands that hand every option they do not know to the training parser
TAKES_TRAINING_OPTIONS = {"plan", "memory"}

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
OPTION = re.compile(r"(?<![\w-])(--[a-z][\w.-]*[\w])")


def relative_links(document: Path) -> list[str]:
    """Return the targets of the document's markdown links that point into the repository (no URL, no bare anchor)."""
    text = re.sub(r"```.*?```", "", document.read_text(), flags=re.DOTALL)
    return [target for target in LINK.findall(text) if not re.match(r"[a-z]+:", target) and not target.startswith("#")]


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_leads_to_a_file(document: Path):
    missing = [target for target in relative_links(document) if not (document.parent / target.split("#")[0]).exists()]
    assert not missing, f"{document.relative_to(REPO)} links to {missing}"


def test_the_readme_is_at_most_10_kb():
    assert len((REPO / "README.md").read_bytes()) <= 10_240


def documented_options() -> dict[str, set[str]]:
    """Return, per command, the options its section of docs/reference/commands.md names (sections: ``## medseg.<cmd>``)."""
    sections = re.split(r"^## ", COMMANDS_PAGE.read_text(), flags=re.MULTILINE)[1:]
    options: dict[str, set[str]] = {}
    for section in sections:
        heading, _, body = section.partition("\n")
        command = re.search(r"medseg\.(\w+)", heading)
        if command:
            options[command.group(1)] = set(OPTION.findall(body))
    return options


class ParserBuilt(BaseException):
    """Raised in place of parsing, carrying the parser a command built (BaseException: no command catches it)."""

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.parser = parser


def built_parser(module: str, monkeypatch: pytest.MonkeyPatch) -> argparse.ArgumentParser:
    """Return the parser ``module``'s main() builds, captured before it parses anything."""

    def capture(parser, *args, **kwargs):
        raise ParserBuilt(parser)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", capture)
    with pytest.raises(ParserBuilt) as built:
        importlib.import_module(module).main([])
    monkeypatch.undo()
    return built.value.parser


def argparse_options(module: str, monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """Return the option strings of the parser ``module``'s main() builds."""
    return set(built_parser(module, monkeypatch)._option_string_actions)


def training_option_exists(option: str, parser_options: set[str]) -> bool:
    """True if ``python -m medseg.train`` takes ``option``; a class given by path (``--trainer.logger.class_path``,
    ``--trainer.logger.init_args.save_dir``) counts when the option it configures exists."""
    owner = re.split(r"\.(class_path|init_args)\b", option)[0]
    return option in parser_options or (owner != option and owner in parser_options)


@pytest.fixture(scope="module")
def training_options() -> set[str]:
    """Return the options of ``python -m medseg.train``: its own parser's (``-o``, ``--retrain``, ...), LightningCLI's
    and ``--debug`` (every command's, read by ``run_command``)."""
    return {*train.train_parser()._option_string_actions, *build_cli([], OptionsOnlyCLI).parser._option_string_actions, DEBUG_OPTION}


def test_the_reference_documents_every_command():
    assert set(documented_options()) == {"train", *ARGPARSE_COMMANDS}


@pytest.mark.parametrize("command", sorted(ARGPARSE_COMMANDS))
def test_every_option_the_reference_names_exists(command: str, training_options: set[str], monkeypatch: pytest.MonkeyPatch):
    own = argparse_options(ARGPARSE_COMMANDS[command], monkeypatch)
    documented = documented_options()[command]
    assert documented, f"the reference names no option of medseg.{command}"
    unknown = sorted(
        option for option in documented
        if option not in own and not (command in TAKES_TRAINING_OPTIONS and training_option_exists(option, training_options))
    )
    assert not unknown, f"docs/reference/commands.md names options medseg.{command} does not take: {unknown}"


def test_every_training_option_the_reference_names_exists(training_options: set[str]):
    unknown = sorted(option for option in documented_options()["train"] if not training_option_exists(option, training_options))
    assert not unknown, f"docs/reference/commands.md names options medseg.train does not take: {unknown}"


def test_every_config_key_the_reference_names_exists(training_options: set[str]):
    rows = [line.split("|")[1] for line in CONFIG_PAGE.read_text().splitlines() if line.startswith("| `")]
    keys = [key for cell in rows for key in re.findall(r"`([a-z_]+\.[\w.]+)`", cell)]
    assert keys
    unknown = sorted(key for key in keys if f"--{key}" not in training_options)
    assert not unknown, f"docs/reference/config.md names keys medseg.train does not take: {unknown}"


def test_a_misspelt_option_is_caught(training_options: set[str], monkeypatch: pytest.MonkeyPatch):
    assert not training_option_exists("--data.rooot", training_options)
    assert not training_option_exists("--trainer.loger.class_path", training_options)
    assert "--sw_batchsize" not in argparse_options(ARGPARSE_COMMANDS["infer"], monkeypatch)


def test_the_deprecation_table_lists_every_old_spelling_and_its_release(monkeypatch: pytest.MonkeyPatch):
    section = COMMANDS_PAGE.read_text().partition("## Deprecated spellings")[2].partition("\n## ")[0]
    rows = [[cell.strip().strip("`") for cell in line.split("|")[1:-1]] for line in section.splitlines() if line.startswith("| `")]
    parsers = [built_parser(module, monkeypatch) for module in [*ARGPARSE_COMMANDS.values(), "medseg.training.command"]]
    training = {f"--model.{old}": f"--model.{new}" for old, new in OLD_MODEL_KEYS.items()}  # on the command line and in configs
    assert {row[0]: row[2] for row in rows} == {old: " ".join(new) for parser in parsers for old, new in parser.old_spellings.items()} | training
    assert all(row[3] == OLD_SPELLINGS_REMOVED_IN for row in rows)
