"""The quality check of an export: each runtime and precision this machine offers segments labelled cases, and is
scored against the ground truth and against the fp32 PyTorch path; one whose Dice drops more than a tolerance is
refused as the default, and the fastest of the rest becomes the export's default (``manifest.json``)."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch

from medseg.atomic import atomic_target, write_text_atomic
from medseg.data.formats import find_scans
from medseg.errors import MedsegError
from medseg.evaluation.metrics import dice_per_class, mean_over_cases
from medseg.inference.checkpoint import EXPORT_MANIFEST, EXPORT_ONNX, file_sha256, load_export
from medseg.inference.postprocessing import postprocessing_beside
from medseg.inference.predictor import InferenceOptions, Predictor
from medseg.model.runtimes import OnnxRuntimeNetwork, installed
from medseg.option_values import CHECK_TOLERANCE
from medseg.precision import cpu_has_native_bf16
from medseg.tables import format_rows

__all__ = ["CHECK_FILES", "Candidate", "CandidateScores", "CheckResult", "check_export", "offered", "refusal"]

INT8_ONNX = "models/model.int8.onnx"  # ONNX Runtime's dynamic INT8 quantisation of model.onnx: measured, for servers to take
CHECK_FILES = ("check.json", "check.md", "check.png")
PRECISION_NAMES = {"32-true": "fp32", "bf16-mixed": "bf16", "16-mixed": "fp16", "int8": "int8"}


@dataclass(frozen=True)
class Candidate:
    """One way to run the exported network: a runtime and a precision ("int8": ONNX Runtime's quantised model,
    measured only: ``medseg.infer`` runs the other precisions)."""

    runtime: str
    precision: str

    @property
    def name(self) -> str:
        return f"{self.runtime} {PRECISION_NAMES[self.precision]}"


REFERENCE = Candidate("torch", "32-true")


def offered(device: torch.device) -> list[Candidate]:
    """Return the ways this machine offers, the fp32 PyTorch reference first: bf16 where the CPU has it natively or on a
    GPU, fp16 on a GPU, ONNX Runtime (fp32, on a GPU through onnxruntime-gpu's CUDA provider; INT8 on the CPU) and
    OpenVINO (CPU; fp32, bf16) where installed."""
    ways = [REFERENCE]
    if device.type == "cuda" or cpu_has_native_bf16():
        ways.append(Candidate("torch", "bf16-mixed"))
    if device.type == "cuda":
        ways.append(Candidate("torch", "16-mixed"))
    if installed("onnxruntime") and (device.type == "cpu" or "CUDAExecutionProvider" in __import__("onnxruntime").get_available_providers()):
        ways.append(Candidate("onnxruntime", "32-true"))
        if device.type == "cpu" and installed("onnxruntime.quantization"):
            ways.append(Candidate("onnxruntime", "int8"))
    if device.type == "cpu" and installed("openvino"):
        ways += [Candidate("openvino", "32-true")] + ([Candidate("openvino", "bf16-mixed")] if cpu_has_native_bf16() else [])
    return ways


@dataclass(frozen=True)
class CandidateScores:
    """What one way gave on the labelled cases.

    Attributes:
        dice: mean Dice per foreground class against the ground truth (NaN: the class is in no case).
        dice_vs_reference: mean Dice per class against the fp32 PyTorch labels.
        voxel_agreement: share of all voxels labelled as the fp32 PyTorch path labels them.
        seconds: prediction time (windows, inversion, postprocessing) of all cases, scans read beforehand.
        refused: why it may not be the default (None: it may).
    """

    candidate: Candidate
    dice: dict[str, float]
    dice_vs_reference: dict[str, float]
    voxel_agreement: float
    seconds: float
    refused: str | None


@dataclass(frozen=True)
class CheckResult:
    """Every way's scores, the tolerance, and the default chosen."""

    cases: list[str]
    tolerance: float
    scores: list[CandidateScores]
    default: Candidate

    def table(self) -> str:
        """Return one row per way: time, speed against fp32 PyTorch, agreement, Dice per class, and the choice."""
        rows = []
        for scores in self.scores:
            row = {"way": scores.candidate.name, "seconds": f"{scores.seconds:.2f}", "speed": f"{self.scores[0].seconds / scores.seconds:.2f}x",
                   "voxels as fp32": f"{100 * scores.voxel_agreement:.4f} %"}
            for name in scores.dice:
                row[f"Dice {name}: truth / fp32"] = f"{scores.dice[name]:.4f} / {scores.dice_vs_reference[name]:.4f}"
            row["choice"] = "default" if scores.candidate == self.default else ("not default: " + scores.refused if scores.refused else "")
            rows.append(row)
        return format_rows(rows)

    def to_dict(self) -> dict[str, Any]:
        return {"cases": self.cases, "tolerance": self.tolerance, "default": asdict(self.default),
                "scores": [{**asdict(s), "candidate": asdict(s.candidate), "name": s.candidate.name} for s in self.scores]}


def check_export(folder: str | Path, labelled: str | Path, tolerance: float = CHECK_TOLERANCE, device: str | None = None) -> CheckResult:
    """Return the check of the export ``folder`` on the labelled cases of ``labelled`` (a dataset: folder or
    dataset.json), after writing ``check.json``, ``check.md`` and ``check.png`` into it and recording the default
    runtime and precision (and the INT8 model, where measured) in its manifest."""
    folder = Path(folder)
    if not 0 <= tolerance < 1:
        raise MedsegError(f"--tolerance must be in [0, 1), got {tolerance}")
    cases = [case for case in find_scans(labelled) if case.label is not None]
    if not cases:
        raise MedsegError(f"{labelled} holds no labelled cases: --check needs a dataset with labels (folder or dataset.json)")
    model = load_export(folder)
    decision = postprocessing_beside([folder])
    options = InferenceOptions(device=device)
    reference = Predictor(model, replace(options, precision="32-true", runtime="torch"), decision[0] if decision else None)
    scans = [reference.read(case) for case in cases]
    truths = [np.asarray(nib.load(case.label).dataobj).astype(np.int64) for case in cases]
    classes = model.recipe.class_names
    reference_labels: list[np.ndarray] = []
    scores = []
    for candidate in offered(reference.device):
        if candidate.precision == "int8":
            quantize(folder)
            int8 = replace(model, network=OnnxRuntimeNetwork(folder / INT8_ONNX, reference.device))
            predictor = Predictor(int8, replace(options, precision="32-true", runtime="torch"), reference.postprocessing)
        else:
            predictor = Predictor(model, replace(options, precision=candidate.precision, runtime=candidate.runtime), reference.postprocessing)
        predictor.predict(scans[0])  # untimed: the first call's one-off set-up (oneDNN kernels, graph compilation)
        start = time.perf_counter()
        labels = [predictor.predict(scan).labels for scan in scans]
        seconds = time.perf_counter() - start
        if not reference_labels:
            reference_labels = labels
        dice = _mean_dice([dice_per_class(made, truth, len(classes)) for made, truth in zip(labels, truths)], classes)
        versus = _mean_dice([dice_per_class(made, ref, len(classes)) for made, ref in zip(labels, reference_labels)], classes)
        agreement = sum(int((made == ref).sum()) for made, ref in zip(labels, reference_labels)) / sum(ref.size for ref in reference_labels)
        scores.append(CandidateScores(candidate, dice, versus, agreement, seconds, None))
    scores = [replace(s, refused=refusal(s, scores[0], tolerance)) for s in scores]
    allowed = [s for s in scores if s.refused is None and s.candidate.precision != "int8"]
    default = min(allowed, key=lambda s: s.seconds).candidate
    result = CheckResult([case.name for case in cases], tolerance, scores, default)
    _write(folder, result)
    return result


def _mean_dice(per_case: Sequence[Sequence[float]], classes: Sequence[str]) -> dict[str, float]:
    return dict(zip(classes[1:], (float(v) for v in mean_over_cases(per_case, len(classes) - 1))))


def refusal(scores: CandidateScores, reference: CandidateScores, tolerance: float) -> str | None:
    """Return why ``scores`` may not be the default (a class's Dice against the truth drops more than ``tolerance``)."""
    drops = {name: reference.dice[name] - dice for name, dice in scores.dice.items() if not math.isnan(dice) and not math.isnan(reference.dice[name])}
    worst = max(drops, key=drops.get, default=None)
    if worst is None or drops[worst] <= tolerance:
        return "INT8 runs from models/model.int8.onnx outside medseg" if scores.candidate.precision == "int8" else None
    return f"Dice of {worst} drops {drops[worst]:.4f} (> tolerance {tolerance}) against fp32"


def quantize(folder: Path) -> None:
    """Write ONNX Runtime's dynamic INT8 quantisation of the export's ONNX model (weights int8, activations per batch)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with atomic_target(folder / INT8_ONNX) as staged:
        quantize_dynamic(str(folder / EXPORT_ONNX), str(staged), weight_type=QuantType.QInt8)


def _write(folder: Path, result: CheckResult) -> None:
    """Write the check's table, JSON and plot, and record the default and the new files in the manifest."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    write_text_atomic(folder / "check.json", json.dumps(result.to_dict(), indent=2) + "\n")
    write_text_atomic(folder / "check.md", f"# Export check on {len(result.cases)} cases (tolerance {result.tolerance})\n\n```\n{result.table()}\n```\n")
    classes = list(result.scores[0].dice)
    figure, (dice_axes, time_axes) = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / len(result.scores)
    for index, scores in enumerate(result.scores):
        dice_axes.bar(np.arange(len(classes)) + index * width, [scores.dice[c] for c in classes], width, label=scores.candidate.name)
    dice_axes.set(xticks=np.arange(len(classes)) + 0.4 - width / 2, xticklabels=classes, ylabel="Dice against the ground truth", ylim=(0, 1))
    dice_axes.legend(fontsize="small")
    time_axes.barh([s.candidate.name for s in result.scores], [s.seconds for s in result.scores])
    time_axes.set(xlabel=f"seconds for {len(result.cases)} cases")
    figure.tight_layout()
    with atomic_target(folder / "check.png") as staged:
        figure.savefig(staged, format="png", dpi=100)
    plt.close(figure)
    manifest_path = folder / EXPORT_MANIFEST
    manifest = json.loads(manifest_path.read_text())
    manifest["default_runtime"], manifest["default_precision"] = result.default.runtime, result.default.precision
    manifest["check"] = {"cases": len(result.cases), "tolerance": result.tolerance, "refused": {s.candidate.name: s.refused for s in result.scores if s.refused}}
    extra = [name for name in (*CHECK_FILES, INT8_ONNX) if (folder / name).is_file()]
    manifest["files"] = dict(sorted({**manifest["files"], **{name: file_sha256(folder / name) for name in extra}}.items()))
    write_text_atomic(manifest_path, json.dumps(manifest, indent=2) + "\n")
