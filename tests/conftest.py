"""Shared fixtures: a small demo dataset generated once per test session, and a private cache folder; tests
marked ``cuda`` are skipped without a CUDA GPU. The suite runs on the machine's cores with pytest-xdist (pyproject.toml's
addopts): each worker takes whole test modules, and one worker every test of the shared trained run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from medseg.data.demo import generate_demo_dataset
from medseg.precision import CPU_BF16_ENV


WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if WORKERS > 1:  # the workers share the cores: one worker's torch threads would otherwise take them all
    THREADS = max(1, torch.get_num_threads() // WORKERS)
    torch.set_num_threads(THREADS)
    # and so do the processes tests start (training runs, DDP ranks, notebook kernels): a run compared with one in this
    # process then sums in the same order
    os.environ["OMP_NUM_THREADS"] = str(THREADS)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        # --dist loadgroup: a module stays on one worker with its module fixtures, and so does every test of the shared
        # trained run, which each worker would train again
        shared = {"trained_run", "_trained_runs"} & set(getattr(item, "fixturenames", ()))
        item.add_marker(pytest.mark.xdist_group("trained_run" if shared else item.nodeid.split("::")[0]))
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Keep generated data and caches out of the user's home during tests."""
    mp = pytest.MonkeyPatch()
    mp.setenv("MEDSEG_CACHE", str(tmp_path_factory.mktemp("medseg-cache")))
    yield
    mp.undo()


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six demo phantom cases in MSD layout (read-only for tests: copy before modifying)."""
    return generate_demo_dataset(tmp_path_factory.mktemp("demo"), num_cases=6, seed=0)


@pytest.fixture(params=[pytest.param(False, id="cpu-fp32"), pytest.param(True, id="cpu-bf16")])
def cpu_bf16(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Run a test twice, with ``16-mixed`` resolving on a CPU as on one without native bf16 (32-true) and as on one
    with it (bf16-mixed), whatever this machine has; subprocesses inherit the setting. Yields whether bf16 is on."""
    monkeypatch.setenv(CPU_BF16_ENV, "1" if request.param else "0")
    return request.param


@pytest.fixture(scope="session")
def _trained_runs(demo_root: Path, tmp_path_factory: pytest.TempPathFactory):
    """Train the tiny demo run once per CPU resolution of 16-mixed, on first use, for every test that reads one; at
    the scans' own spacing (no resampling), so that what inference writes scores exactly what validation did."""
    from medseg import training as train
    from tests.helpers.cli import tiny_train_args

    runs = {}

    def run(bf16: bool):
        if bf16 not in runs:
            with pytest.MonkeyPatch.context() as mp:
                mp.setenv(CPU_BF16_ENV, "1" if bf16 else "0")
                runs[bf16] = train.run(tiny_train_args(demo_root, tmp_path_factory.mktemp("trained")) + ["--data.spacing=null"])
        return runs[bf16]

    return run


@pytest.fixture
def trained_run(_trained_runs, cpu_bf16: bool):
    """A finished ``medseg.train`` run of the tiny network on the demo data (2 epochs, default 16-mixed), shared by the
    tests that only read it; once with each CPU resolution of 16-mixed (``cpu_bf16``). Do not modify its files."""
    return _trained_runs(cpu_bf16)
