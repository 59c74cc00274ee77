from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command_verbatim():
    ci_command = (REPO / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci_command.endswith("-m pytest")
    assert f"\n{ci_command}\n" in (REPO / "README.md").read_text()


def test_torch_is_pinned_exactly():
    assert '"torch==2.13.0"' in (REPO / "pyproject.toml").read_text()
