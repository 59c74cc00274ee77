"""The notebooks run top to bottom on CPU from their own folder, show their figures, and are committed without outputs."""

from __future__ import annotations

import os
import time
from pathlib import Path

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
# Figures each notebook must show inline (a figure that fails to render is silently missing otherwise).
FIGURES = {"01_explore_data.ipynb": 3, "02_memory_fp32_vs_amp.ipynb": 1, "03_inference.ipynb": 2, "04_cross_validation.ipynb": 2}
CELL_TIMEOUT_S = 120


def test_every_notebook_is_tested():
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == sorted(FIGURES)


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_notebook_is_committed_without_outputs(name):
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(cell.outputs == [] and cell.execution_count is None for cell in code)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(FIGURES))
def test_notebook_runs_top_to_bottom_on_cpu(name, tmp_path):
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    # the kernel inherits MEDSEG_CACHE from conftest; TMPDIR keeps what the notebook writes inside tmp_path
    env = {**os.environ, "TMPDIR": str(tmp_path), "CUDA_VISIBLE_DEVICES": ""}
    # no kernel folders: ipykernel's built-in spec runs this interpreter, never a python3 kernel installed elsewhere
    kernel = KernelManager(kernel_name="python3", kernel_spec_manager=KernelSpecManager(kernel_dirs=[]))
    client = NotebookClient(notebook, km=kernel, timeout=CELL_TIMEOUT_S, resources={"metadata": {"path": str(NOTEBOOKS)}})
    start = time.perf_counter()
    try:
        client.execute(env=env)
    finally:
        kernel.shutdown_kernel(now=True)  # nbclient leaves a kernel it did not start running (and busy) until pytest exits
    print(f"{name}: {time.perf_counter() - start:.1f} s")
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert sum("image/png" in output.get("data", {}) for output in outputs) == FIGURES[name]
    assert not [output for output in outputs if output.output_type == "error"]
