"""medseg.export --check: every way this machine offers scored on labelled cases, the refusal of a way that loses
Dice, and the default it records."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from medseg.exporting import check
from medseg.exporting.check import REFERENCE, Candidate, CandidateScores, check_export, refusal
from medseg.model.runtimes import installed
from medseg.inference.checkpoint import load_ensemble, read_manifest


def scores(candidate: Candidate, dice: dict[str, float]) -> CandidateScores:
    return CandidateScores(candidate, dice, dice, 1.0, 1.0, None)


def test_a_way_whose_dice_drops_more_than_the_tolerance_is_refused_with_the_class_and_the_drop():
    reference = scores(REFERENCE, {"organ": 0.90, "lesion": 0.70})
    assert refusal(scores(Candidate("torch", "bf16-mixed"), {"organ": 0.895, "lesion": 0.70}), reference, 0.01) is None
    why = refusal(scores(Candidate("openvino", "bf16-mixed"), {"organ": 0.90, "lesion": 0.68}), reference, 0.01)
    assert why == "Dice of lesion drops 0.0200 (> tolerance 0.01) against fp32"


def test_a_class_in_no_case_refuses_nothing():
    reference = scores(REFERENCE, {"organ": 0.9, "lesion": float("nan")})
    assert refusal(scores(Candidate("onnxruntime", "32-true"), {"organ": 0.9, "lesion": float("nan")}), reference, 0.0) is None


def one_case_dataset(demo_root: Path, folder: Path) -> Path:
    """Return a dataset of the demo's first case only (copied: a dataset's files must lie inside it), so that the check
    stays quick."""
    description = json.loads((demo_root / "dataset.json").read_text())
    description["training"] = description["training"][:1]
    for key in ("image", "label"):
        (folder / description["training"][0][key]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(demo_root / description["training"][0][key], folder / description["training"][0][key])
    (folder / "dataset.json").write_text(json.dumps(description))
    return folder


def test_the_check_scores_every_way_and_records_the_fastest_allowed_as_the_default(exported: Path, demo_root: Path, tmp_path: Path, monkeypatch):
    # OpenVINO is left out here, and its runtime tested in a process of its own (test_runtimes.py): once loaded into the
    # test process, its threads have made a later test's fork of DataLoader workers end the whole run with a segfault
    monkeypatch.setattr(check, "installed", lambda module: module != "openvino" and installed(module))
    folder = tmp_path / "export"
    shutil.copytree(exported, folder)
    result = check_export(folder, one_case_dataset(demo_root, tmp_path / "labelled"), device="cpu")
    assert result.cases == ["phantom_000"]
    names = [s.candidate.name for s in result.scores]
    assert names[0] == "torch fp32" and "onnxruntime fp32" in names and "onnxruntime int8" in names
    assert result.scores[0].voxel_agreement == 1.0 and all(0.0 <= s.voxel_agreement <= 1.0 for s in result.scores)
    allowed = [s for s in result.scores if s.refused is None]
    assert result.default == min(allowed, key=lambda s: s.seconds).candidate
    manifest = read_manifest(folder)  # the new files are listed with their checksums
    assert {"check.json", "check.md", "check.png", "models/model.int8.onnx"} <= set(manifest["files"])
    assert (manifest["default_runtime"], manifest["default_precision"]) == (result.default.runtime, result.default.precision)
    assert json.loads((folder / "check.json").read_text())["default"] == {"runtime": result.default.runtime, "precision": result.default.precision}
    [model] = load_ensemble([folder])
    assert model.runtime == result.default.runtime and model.recipe.precision == result.default.precision
