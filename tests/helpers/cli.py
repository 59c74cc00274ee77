"""The training command as tests run it: the repository root and the options of a tiny, fast fit on the demo data."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers.stand_ins import TINY_UNET

REPO = Path(__file__).resolve().parents[2]


def tiny_train_args(root: Path, out: Path) -> list[str]:
    """Return ``medseg.train`` options for a 2-epoch fit of TINY_UNET on 32x32x16 patches of ``root``, written to ``out``."""
    return [
        f"--data.root={root}",
        "--data.patch_size=[32, 32, 16]",
        "--data.num_folds=3",
        "--data.iterations_per_epoch=3",
        "--data.num_workers=0",
        f"--model.network_kwargs={json.dumps(TINY_UNET)}",
        "--trainer.max_epochs=2",
        "--trainer.check_val_every_n_epoch=1",
        "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={out}",
        f"--trainer.logger.init_args.save_dir={out}",
    ]


def run_module(module: str, *args: str, timeout: float = 600, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m module args`` in a fresh interpreter from the repository root and return the finished process."""
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=REPO, timeout=timeout, env=env)


def run_main(main: Callable[[list[str]], object], argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    """Run a command's ``main(argv)`` in this process (no interpreter start-up) and return (exit code, stdout, stderr)."""
    capsys.readouterr()
    try:
        returned = main(argv)
        code = returned if isinstance(returned, int) else 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else int(stop.code is not None)
    captured = capsys.readouterr()
    return code, captured.out, captured.err
