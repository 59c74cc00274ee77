"""What the benchmarks share: the ``--output`` option and one writer, so that every result file says in one shape
which machine, which versions, which date and which command made it.

Each benchmark runs from the repository root as ``python -m benchmarks.<name>`` and hands its own figures and its
own Markdown to ``write_results``, which writes ``OUTPUT.json``::

    {"benchmark": ..., "command": ..., "date_utc": ..., "machine": {...}, "versions": {...}, "results": {...}}

and ``OUTPUT.md``: a title, the same header in three lines, then the benchmark's text.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import shlex
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = Path("benchmarks/results")


def cpu_name() -> str:
    """Return the CPU's model name (/proc/cpuinfo), else what the platform says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def gpu_name() -> str | None:
    """Return the first CUDA GPU's name, or None without one (torch is imported only if the benchmark did)."""
    torch = sys.modules.get("torch")
    return torch.cuda.get_device_name(0) if torch is not None and torch.cuda.is_available() else None


def machine() -> dict:
    """Return the CPU (name, cores) and the GPU (None without one) this process runs on."""
    return {"cpu": cpu_name(), "cpu_cores": os.cpu_count(), "gpu": gpu_name()}


def versions() -> dict:
    """Return the versions of python and of the packages every benchmark measures through (None where missing)."""

    def version(package: str) -> str | None:
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return None

    found = {"python": platform.python_version(), **{p: version(p) for p in ("torch", "monai", "lightning", "medseg")}}
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        found |= {"cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version()}
    return found


def command(environment: Mapping[str, str] | None = None) -> str:
    """Return the command line that ran this benchmark, as ``python -m benchmarks.<name> ...``, after ``environment``."""
    words = [f"{k}={v}" for k, v in (environment or {}).items()] + ["python", "-m", f"benchmarks.{Path(sys.argv[0]).stem}", *sys.argv[1:]]
    return shlex.join(words)


class _DeprecatedOut(argparse.Action):
    def __call__(self, parser, namespace, value, option_string=None) -> None:
        print(f"{option_string} is deprecated and will be removed: use --output", file=sys.stderr)
        setattr(namespace, self.dest, value)


def add_output_option(parser: argparse.ArgumentParser, required: bool = False, default: Path | None = None) -> None:
    """Add ``--output`` (``-o``): the path the results are written to, without suffix; ``--out`` still works, with a notice."""
    what = "write OUTPUT.json and OUTPUT.md" + ("" if required or default else " (default: print only)")
    parser.add_argument("-o", "--output", type=Path, required=required, default=default, help=what)
    parser.add_argument("--out", type=Path, dest="output", action=_DeprecatedOut, help=argparse.SUPPRESS)


def markdown_rows(rows: Sequence[Mapping[str, object]]) -> str:
    """Return `rows` (same keys each, the column titles) as a Markdown table."""
    if not rows:
        return ""
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return "\n".join(lines + ["| " + " | ".join(str(row[c]) for c in columns) + " |" for row in rows])


def header_lines(record: Mapping) -> str:
    """Return the Markdown header of a record: command, date and machine, versions."""
    m, v = record["machine"], record["versions"]
    gpu = m["gpu"] or "none"
    found = ", ".join(f"{name} {version}" for name, version in v.items() if version is not None)
    return f"Command: `{record['command']}`  \nDate (UTC): {record['date_utc']}; CPU: {m['cpu']} ({m['cpu_cores']} cores); GPU: {gpu}  \nVersions: {found}\n"


def write_results(output: Path | None, title: str, results: Mapping, markdown: str, environment: Mapping[str, str] | None = None) -> dict:
    """Return the record of this run (header and ``results``), written to ``output`` .json and .md where given.

    Args:
        output: path without suffix; None writes nothing.
        title: the Markdown file's first heading.
        results: the benchmark's own figures and settings (JSON-serialisable).
        markdown: the benchmark's text under the header: tables, what was measured, what it means.
        environment: variables the command ran under that change what it measures (written before the command).
    """
    record = {
        "benchmark": Path(sys.argv[0]).stem,
        "command": command(environment),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "machine": machine(),
        "versions": versions(),
        "results": dict(results),
    }
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        Path(f"{output}.json").write_text(json.dumps(record, indent=2) + "\n")
        Path(f"{output}.md").write_text(f"# {title}\n\n{header_lines(record)}\n{markdown.strip()}\n")
    return record
