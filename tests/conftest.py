"""Shared fixtures: a small demo dataset generated once per test session, and a private cache folder; tests
marked ``cuda`` are skipped without a CUDA GPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from medseg.data.demo import generate_demo_dataset


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
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
