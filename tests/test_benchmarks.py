"""The benchmarks are a package: each runs as ``python -m benchmarks.<name>``, answers ``--help`` without measuring
anything, and writes its results through one writer in one shape; neither they nor the library import the tests,
and the library imports its test stand-ins (``medseg.testing``) only for type checking."""

from __future__ import annotations

import ast
import json
import pkgutil
import sys
from pathlib import Path

import pytest

import benchmarks
from benchmarks.common import add_output_option, markdown_rows, write_results

REPO = Path(__file__).resolve().parent.parent
BENCHMARKS = sorted(m.name for m in pkgutil.iter_modules(benchmarks.__path__) if m.name not in ("common", "nnunet"))


def imported_modules(path: Path) -> list[tuple[str, bool]]:
    """Return (module, under ``if TYPE_CHECKING``) for every import statement in a source file."""
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, typing_only: bool) -> None:
        for child in ast.iter_child_nodes(node):
            guarded = typing_only or (isinstance(child, ast.If) and isinstance(child.test, ast.Name) and child.test.id == "TYPE_CHECKING")
            if isinstance(child, ast.Import):
                found.extend((alias.name, guarded) for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                found.append((child.module, guarded))
            visit(child, guarded)

    visit(ast.parse(path.read_text()), False)
    return found


@pytest.mark.parametrize("name", BENCHMARKS)
def test_a_benchmark_imports_without_side_effects_and_answers_help(name, tmp_path, monkeypatch, capsys):
    if name == "dicom":
        pytest.importorskip("highdicom")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [str(REPO / "benchmarks" / f"{name}.py"), "--help"])
    module = __import__(f"benchmarks.{name}", fromlist=["main"])
    assert capsys.readouterr().out == ""
    with pytest.raises(SystemExit) as exit:
        module.main()
    assert exit.value.code == 0
    assert "usage:" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []


def test_neither_the_benchmarks_nor_the_library_import_the_tests():
    sources = [*(REPO / "benchmarks").rglob("*.py"), *(REPO / "medseg").rglob("*.py")]
    offenders = [f"{path.relative_to(REPO)}: {module}" for path in sources for module, _ in imported_modules(path)
                 if module == "tests" or module.startswith("tests.")]
    assert offenders == []


def test_the_library_imports_its_test_stand_ins_only_for_type_checking():
    library = [path for path in (REPO / "medseg").rglob("*.py") if "testing" not in path.relative_to(REPO / "medseg").parts]
    offenders = [f"{path.relative_to(REPO)}: {module}" for path in library for module, typing_only in imported_modules(path)
                 if module.startswith("medseg.testing") and not typing_only]
    assert offenders == []


def test_no_benchmark_edits_the_import_path():
    assert [path.name for path in (REPO / "benchmarks").glob("*.py") if "sys.path" in path.read_text()] == []


def test_results_are_written_in_one_shape_with_machine_versions_date_and_command(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", [str(REPO / "benchmarks" / "training.py"), "--steps", "3", "--output", "x y"])
    record = write_results(tmp_path / "run" / "result", "A title", {"patches_per_s": 1.5}, "| a |\n|---|\n| 1 |")
    written = json.loads((tmp_path / "run" / "result.json").read_text())
    assert written == record
    assert list(written) == ["benchmark", "command", "date_utc", "machine", "versions", "results"]
    assert written["benchmark"] == "training" and written["results"] == {"patches_per_s": 1.5}
    assert written["command"] == "python -m benchmarks.training --steps 3 --output 'x y'"
    assert {"cpu", "cpu_cores", "gpu"} <= set(written["machine"])
    assert {"python", "torch", "monai", "lightning", "medseg"} <= set(written["versions"])
    markdown = (tmp_path / "run" / "result.md").read_text().splitlines()
    assert markdown[0] == "# A title"
    assert markdown[2] == f"Command: `{written['command']}`  "
    assert markdown[3].startswith(f"Date (UTC): {written['date_utc']}; CPU: ")
    assert markdown[-1] == "| 1 |"


def test_a_forced_environment_variable_is_part_of_the_command(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", [str(REPO / "benchmarks" / "loop_overhead.py")])
    record = write_results(None, "t", {}, "", environment={"MEDSEG_CPU_BF16": "1"})
    assert record["command"] == "MEDSEG_CPU_BF16=1 python -m benchmarks.loop_overhead"
    assert list(tmp_path.iterdir()) == []


def test_out_still_names_the_output_with_a_deprecation_notice(capsys):
    import argparse

    parser = argparse.ArgumentParser()
    add_output_option(parser)
    assert parser.parse_args(["--out", "results/a"]).output == Path("results/a")
    assert "--out is deprecated" in capsys.readouterr().err
    assert parser.parse_args(["-o", "results/b"]).output == Path("results/b")
    assert parser.parse_args([]).output is None


def test_rows_format_as_a_markdown_table():
    text = markdown_rows([{"case": "a", "ml": 1.5}, {"case": "long_name", "ml": 10.25}])
    assert text.splitlines() == ["| case | ml |", "|---|---|", "| a | 1.5 |", "| long_name | 10.25 |"]
    assert markdown_rows([]) == ""
