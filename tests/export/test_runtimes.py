"""medseg.infer with an export folder: the checkpoints' labels from every runtime, and one-line refusals."""

from __future__ import annotations

import builtins
import shutil
from pathlib import Path

import pytest

from medseg.errors import MedsegError
from medseg.inference import command as infer
from medseg.inference.checkpoint import load_ensemble
from medseg.model.runtimes import require_runtime
from tests.helpers.cli import run_main, run_module
from tests.helpers.label_maps import voxel_agreement

# Runtimes compute the same fp32 logits in another order (1e-6 apart): a voxel whose two best classes are that close
# may flip; on the demo scans none does, and the target on real scans is 99.99 %
AGREEMENT = 0.999


@pytest.fixture(scope="module")
def checkpoint_labels(cv_folder: Path, scans: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The labels medseg.infer makes of ``scans`` with the checkpoints the export was made from."""
    output = tmp_path_factory.mktemp("checkpoint-labels")
    assert infer.main(["--checkpoint", str(cv_folder), "-i", str(scans), "-o", str(output), "--device", "cpu"]) == 0
    return output


@pytest.mark.parametrize("runtime", ["torch", "onnxruntime", "openvino"])
def test_an_export_folder_gives_the_checkpoints_labels(runtime: str, exported: Path, scans: Path, checkpoint_labels: Path, tmp_path: Path, capsys):
    args = ["--checkpoint", str(exported), "-i", str(scans), "-o", str(tmp_path), "--device", "cpu", "--runtime", runtime]
    if runtime == "openvino":
        pytest.importorskip("openvino")
        # in a process of its own: OpenVINO's threads, once loaded into the test process, have made a later test's fork
        # of DataLoader workers end the whole run with a segfault
        done = run_module("medseg.infer", *args)
        code, err = done.returncode, done.stderr
    else:
        code, _, err = run_main(infer.main, args, capsys)
    assert code == 0, err
    assert voxel_agreement(tmp_path, checkpoint_labels) >= AGREEMENT
    assert runtime == "torch" or f"({runtime}, " in err  # the route names the runtime


def test_a_rerun_with_another_runtime_into_the_same_folder_is_refused_naming_it(exported: Path, scans: Path, tmp_path: Path, capsys):
    common = ["--checkpoint", str(exported), "-i", str(scans), "-o", str(tmp_path), "--device", "cpu"]
    assert run_main(infer.main, [*common, "--runtime", "onnxruntime"], capsys)[0] == 0
    code, _, err = run_main(infer.main, [*common, "--runtime", "torch"], capsys)
    assert code == 1 and "runtime: onnxruntime there, not recorded now" in err


def test_the_export_applies_its_postprocessing(exported: Path):
    from medseg.inference.postprocessing import postprocessing_beside

    assert postprocessing_beside([exported])[0].foreground_largest_component


def test_a_runtime_needs_an_export_folder(cv_folder: Path, scans: Path, tmp_path: Path, capsys):
    code, _, err = run_main(infer.main, ["--checkpoint", str(cv_folder), "-i", str(scans), "-o", str(tmp_path), "--runtime", "onnxruntime"], capsys)
    assert code == 1 and "runs an export folder" in err and len(err.strip().splitlines()) == 1


def test_a_missing_runtime_names_the_extra_to_install(monkeypatch: pytest.MonkeyPatch):
    real_import = builtins.__import__

    def without_openvino(name, *args, **kwargs):
        if name == "openvino":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_openvino)
    with pytest.raises(MedsegError, match=r'--runtime openvino needs openvino, which is not installed: pip install "medseg\[openvino\]"'):
        require_runtime("openvino")


def test_a_changed_export_file_is_refused_in_one_line(exported: Path, tmp_path: Path):
    changed = tmp_path / "changed"
    shutil.copytree(exported, changed)
    (changed / "recipe.json").write_text((changed / "recipe.json").read_text().replace('"overlap": 0.25', '"overlap": 0.5'))
    with pytest.raises(MedsegError, match="recipe.json does not match its checksum"):
        load_ensemble([changed])
