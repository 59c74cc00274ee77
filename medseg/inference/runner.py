"""Segment every scan a path names, writing label maps atomically and summarising what happened."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm import tqdm

from medseg.atomic import write_text_atomic
from medseg.data.dicom_series import require_pydicom
from medseg.data.formats import Case, find_scans
from medseg.errors import MedsegError
from medseg.inference.checkpoint import TrainedModel, load_ensemble
from medseg.inference.postprocessing import postprocessing_beside
from medseg.inference.predictor import InferenceOptions, Prediction, Predictor
from medseg.nifti import like_reference, write_atomic

if TYPE_CHECKING:
    from medseg.inference.dicom_seg import Algorithm

PROBABILITIES_FOLDER = "probabilities"
OUTPUT_FORMATS = ("nifti", "dicom-seg", "both")
DICOM_SEG_SUFFIX = ".seg.dcm"
NO_SOURCE_SERIES = "a NIfTI scan has no DICOM series for a DICOM-SEG to reference; use --output-format nifti for NIfTI scans"
# What inference ran (the checkpoint's recipe with this run's overrides and precision); evaluation reads its class names.
RECIPE_FILE = "recipe.json"


@dataclass
class RunSummary:
    """What a run did with each scan; `failed` holds (scan, reason)."""

    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)

    def lines(self) -> list[str]:
        """Return the summary printed at the end of a run: counts, then one line per failure."""
        head = f"{len(self.done)} done, {len(self.skipped)} skipped, {len(self.failed)} failed"
        if self.skipped:
            head += " (skipped: output exists; --overwrite redoes them)"
        return [head] + [f"failed {name}: {reason}" for name, reason in self.failed]


def segment_scans(
    checkpoint: str | Path | Sequence[str | Path],
    source: str | Path | Sequence[Case],
    output: str | Path,
    options: InferenceOptions | None = None,
    overwrite: bool = False,
    postprocessing: bool = True,
    output_format: str = "nifti",
) -> RunSummary:
    """Return the summary after writing each scan's label map in ``output_format`` to OUTPUT, and ``OUTPUT/recipe.json``.

    ``output_format``: "nifti" (``<case>.nii.gz``), "dicom-seg" (``<case>.seg.dcm``, DICOM series inputs only) or "both".
    ``source`` is a path (``find_scans``) or the cases themselves. ``checkpoint`` is one checkpoint, or several checkpoints and run folders whose models are ensembled
    (``load_ensemble``); with ``postprocessing``, a ``postprocessing.json`` in a folder among them is applied.
    Existing outputs are skipped unless `overwrite`; a failing scan is recorded and the rest go on.
    Inputs are never written: an output path that is an input file is refused before anything runs.
    """
    options = options or InferenceOptions()
    output = Path(output)
    if output_format not in OUTPUT_FORMATS:
        raise MedsegError(f"unknown output format {output_format!r}: use one of {', '.join(OUTPUT_FORMATS)}")
    if output_format != "nifti":
        require_pydicom(f"--output-format {output_format}")
    cases = find_scans(source) if isinstance(source, (str, Path)) else list(source)
    # DICOM-SEG files an earlier run wrote inside the input folder are results, not series to segment
    cases = [case for case in cases if not (case.dicom and all(p.resolve().is_relative_to(output.resolve()) for p in case.images))]
    inputs = {p.resolve() for case in cases for p in case.images}
    targets = {case.name: case_outputs(case.name, output, output_format) for case in cases}
    for name, paths in targets.items():
        for target in paths:
            if target.resolve() in inputs:
                raise MedsegError(f"output {target} would overwrite the input scan; choose another --output folder")
    sources = [Path(checkpoint)] if isinstance(checkpoint, (str, Path)) else [Path(c) for c in checkpoint]
    models = load_ensemble(sources)
    decision = postprocessing_beside(sources) if postprocessing else None
    if decision:
        decision[0].check_classes(models[0].recipe.class_names, decision[1])
    predictor = Predictor(models, options, decision[0] if decision else None)
    ran = predictor.recipe.with_changes(precision=predictor.precision)
    record = {
        **ran.to_dict(),
        "models": [str(model.source) for model in models],
        "postprocessing": {**decision[0].to_dict(), "file": str(decision[1])} if decision else None,
    }
    write_text_atomic(output / RECIPE_FILE, json.dumps(record, indent=2))
    algorithm = dicom_seg_algorithm(ran.class_names, models) if output_format != "nifti" else None
    summary = RunSummary()
    todo = [case for case in cases if overwrite or not all(path.exists() for path in targets[case.name])]
    summary.skipped = [case.name for case in cases if case not in todo]
    if output_format != "nifti":
        summary.failed = [(case.name, NO_SOURCE_SERIES) for case in todo if not case.dicom]
        todo = [case for case in todo if case.dicom]
    progress = tqdm(todo, desc="segmenting", unit="scan", file=sys.stderr)
    # One thread reads and preprocesses the next scan and one writes the last while this one is segmented:
    # decompression and resampling release the GIL, so the network waits for neither.
    with ThreadPoolExecutor(1) as reader, ThreadPoolExecutor(1) as writer:
        reads = [reader.submit(predictor.read, case) for case in todo[:1]]
        writes: list[tuple[str, Future]] = []
        for index, case in enumerate(progress):
            if index + 1 < len(todo):
                reads.append(reader.submit(predictor.read, todo[index + 1]))
            try:
                prediction = predictor.predict(reads[index].result())
            except Exception as err:  # one broken scan must not stop a folder; the reason is kept for the summary
                summary.failed.append((case.name, describe(err)))
                continue
            reads[index] = None  # the scan's volumes can go
            writes.append((case.name, writer.submit(write_prediction, prediction, case, targets[case.name], output, algorithm)))
            progress.write(f"{case.name}: {prediction.route}", file=sys.stderr)
        for name, write in writes:
            try:
                write.result()
            except Exception as err:
                summary.failed.append((name, describe(err)))
            else:
                summary.done.append(name)
    return summary


def dicom_seg_algorithm(class_names: Sequence[str], models: Sequence[TrainedModel]) -> Algorithm:
    """Return what DICOM-SEGs record about the run: class names and checkpoint file names (needs the DICOM extra)."""
    from medseg.inference.dicom_seg import Algorithm

    return Algorithm(tuple(class_names), tuple(Path(model.source).name for model in models))


def case_outputs(name: str, output: Path, output_format: str) -> list[Path]:
    """Return the files a case's label map is written to in ``output_format``."""
    nifti, dicom_seg = output / f"{name}.nii.gz", output / f"{name}{DICOM_SEG_SUFFIX}"
    return {"nifti": [nifti], "dicom-seg": [dicom_seg], "both": [nifti, dicom_seg]}[output_format]


def write_prediction(prediction: Prediction, case: Case, targets: Sequence[Path], output: Path, algorithm: Algorithm | None = None) -> None:
    """Write the case's label map atomically to each target, NIfTI or DICOM-SEG by name (and the probabilities as NIfTI,
    when asked for). A DICOM-SEG needs the case's DICOM series and the ``algorithm`` that segmented it."""
    for target in targets:
        if target.name.endswith(DICOM_SEG_SUFFIX):
            from medseg.inference.dicom_seg import write_dicom_seg

            write_dicom_seg(prediction.labels, prediction.reference, case.name, case.images, algorithm, target)
        else:
            write_atomic(like_reference(prediction.labels, prediction.reference), target)
    if prediction.probabilities is not None:
        write_atomic(like_reference(prediction.probabilities, prediction.reference), output / PROBABILITIES_FOLDER / f"{case.name}.nii.gz")


def describe(err: Exception) -> str:
    """Return a failure's reason as the summary prints it: a user error's own line, else its type and message."""
    return str(err) if isinstance(err, MedsegError) else f"{type(err).__name__}: {err}"
