"""The export folder: what it holds, that its networks compute the checkpoints' logits, and its one-line refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch

from medseg.exporting import export_model
from medseg.exporting import command as export_command
from medseg.errors import MedsegError
from medseg.inference.checkpoint import checkpoint_paths, file_sha256, load_ensemble
from medseg.model.runtimes import MeanOfModels
from medseg.option_values import POSTPROCESSING_FILE
from tests.helpers.cli import run_main

# fp32 logits of the exported graphs against PyTorch's eager network: the same arithmetic, in another order
FP32_TOLERANCE = 1e-4


def test_the_folder_lists_every_file_with_its_checksum_and_holds_recipe_postprocessing_and_bundle(exported: Path, cv_folder: Path):
    manifest = json.loads((exported / "manifest.json").read_text())
    files = sorted(str(p.relative_to(exported)) for p in exported.rglob("*") if p.is_file() and p.name != "manifest.json")
    assert sorted(manifest["files"]) == files
    assert all(file_sha256(exported / name) == checksum for name, checksum in manifest["files"].items())
    assert {"models/model.onnx", "models/model.ts", "recipe.json", POSTPROCESSING_FILE, "configs/inference.json", "configs/metadata.json"} <= set(files)
    checkpoints = checkpoint_paths([cv_folder])
    assert [entry["checkpoint"] for entry in manifest["models"]] == [str(p.absolute()) for p in checkpoints]
    recipe = torch.load(checkpoints[0], map_location="cpu", weights_only=True)["medseg"]
    assert json.loads((exported / "recipe.json").read_text()) == recipe
    assert json.loads((exported / POSTPROCESSING_FILE).read_text()) == json.loads((cv_folder / POSTPROCESSING_FILE).read_text())
    outputs = json.loads((exported / "configs" / "metadata.json").read_text())["network_data_format"]["outputs"]["pred"]
    assert outputs["channel_def"] == {str(i): name for i, name in enumerate(recipe["class_names"])}
    assert manifest["onnx_opset"] >= 18 and manifest["default_runtime"] == "torch"


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_onnx_and_torchscript_give_the_ensembles_mean_logits_in_fp32(exported: Path, cv_folder: Path):
    models = load_ensemble([cv_folder])
    windows = torch.randn(3, 1, *models[0].recipe.patch_size, generator=torch.Generator().manual_seed(0))  # a batch the export never saw
    with torch.no_grad():
        expected = MeanOfModels([model.network for model in models])(windows)
        program = torch.jit.load(str(exported / "models" / "model.ts"))(windows)
    session = onnxruntime.InferenceSession(str(exported / "models" / "model.onnx"), providers=["CPUExecutionProvider"])
    onnx = session.run(None, {"image": windows.numpy()})[0]
    assert torch.allclose(program, expected, atol=FP32_TOLERANCE)
    assert np.allclose(onnx, expected.numpy(), atol=FP32_TOLERANCE)


def test_an_existing_folder_is_refused_without_overwrite(exported: Path, cv_folder: Path):
    with pytest.raises(MedsegError, match="exists; choose another --output or pass --overwrite"):
        export_model([cv_folder], exported)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint"])
def test_a_file_that_is_not_a_checkpoint_is_one_line_and_leaves_nothing(tmp_path: Path, capsys, content: bytes):
    (tmp_path / "model.ckpt").write_bytes(content)
    code, _, err = run_main(export_command.main, ["--checkpoint", str(tmp_path / "model.ckpt"), "-o", str(tmp_path / "export")], capsys)
    assert code == 1 and err.startswith("medseg: error: checkpoint") and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.ckpt"]


def test_an_export_is_not_exported_again(exported: Path, tmp_path: Path):
    with pytest.raises(MedsegError, match="is an export already"):
        export_model([exported], tmp_path / "again")
