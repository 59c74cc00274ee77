"""Segment every scan a path names, writing label maps atomically and summarising what happened."""

from __future__ import annotations

import fcntl
import json
import os
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nibabel as nib
import numpy as np
from tqdm import tqdm

from medseg.atomic import atomic_targets, remove_stale_temporaries, write_error, write_text_atomic
from medseg.data.formats import Case, find_scans
from medseg.errors import MedsegError
from medseg.inference.checkpoint import TrainedModel, load_ensemble
from medseg.inference.postprocessing import postprocessing_beside
from medseg.inference.predictor import InferenceOptions, Prediction, Predictor
from medseg.inference.statistics import STATISTICS_JSON, StatisticsTable, class_statistics, scan_channels
from medseg.io.dicom_series import require_pydicom
from medseg.io.nifti import like_reference
from medseg.option_values import OUTPUT_FORMATS

if TYPE_CHECKING:
    from medseg.io.dicom_seg import Algorithm

PROBABILITIES_FOLDER = "probabilities"
PREVIEWS_FOLDER = "previews"
DICOM_SEG_SUFFIX = ".seg.dcm"
NO_SOURCE_SERIES = "a NIfTI scan has no DICOM series for a DICOM-SEG to reference; use --output_format nifti for NIfTI scans"
# What made the outputs in a folder (the checkpoint's recipe with the run's overrides and precision, the models, the
# postprocessing) and the cases whose outputs it made; evaluation reads its class names.
RECIPE_FILE = "recipe.json"
# Held by the run writing into a folder; a second run into it is refused.
LOCK_FILE = ".medseg-infer.lock"
# Entries of recipe.json that do not change what an output holds: a rerun may differ in them.
NOT_COMPARED = ("cases", "window.batch_size")


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
    statistics: bool = False,
    preview: bool = False,
) -> RunSummary:
    """Return the summary after writing each scan's label map in ``output_format`` to OUTPUT, and ``OUTPUT/recipe.json``.

    ``output_format``: "nifti" (``<case>.nii.gz``), "dicom-seg" (``<case>.seg.dcm``, DICOM series inputs only) or "both"
    (NIfTI scans get their NIfTI only). ``source`` is a path (``find_scans``) or the cases themselves. ``checkpoint`` is
    one checkpoint, or several checkpoints and run folders whose models are ensembled (``load_ensemble``); with
    ``postprocessing``, a ``postprocessing.json`` in a folder among them is applied. With ``statistics``, each scan's
    volume and mean intensity per class go into ``OUTPUT/statistics.json`` and ``.csv`` (``StatisticsTable``); with
    ``preview``, a picture of its labels into ``OUTPUT/previews/<case>.png`` (``medseg.inference.preview``).
    A scan whose outputs (probabilities, statistics and preview included, when asked for) all exist and were made with
    these settings is skipped unless `overwrite`; a folder made with other settings is refused unless `overwrite`
    (``OutputRecord``), as is a second run into the folder at once. A failing scan is recorded and the rest go on.
    Inputs are never written: an output path that is an input file is refused before anything runs.
    """
    options = options or InferenceOptions()
    output = Path(output)
    if output_format not in OUTPUT_FORMATS:
        raise MedsegError(f"unknown output format {output_format!r}: use one of {', '.join(OUTPUT_FORMATS)}")
    if output_format != "nifti":
        require_pydicom(f"--output_format {output_format}")
    cases = find_scans(source) if isinstance(source, (str, Path)) else list(source)
    # DICOM-SEG files an earlier run wrote inside the input folder are results, not series to segment
    cases = [case for case in cases if not (case.dicom and all(p.resolve().is_relative_to(output.resolve()) for p in case.images))]
    inputs = {p.resolve() for case in cases for p in case.images}
    targets = {case.name: case_outputs(case, output, output_format, options.probabilities, preview) for case in cases}
    for paths in targets.values():
        for target in paths.values():
            if target.resolve() in inputs:
                raise MedsegError(f"output {target} would overwrite the input scan; choose another --output folder")
    sources = [Path(checkpoint)] if isinstance(checkpoint, (str, Path)) else [Path(c) for c in checkpoint]
    models = load_ensemble(sources)
    decision = postprocessing_beside(sources) if postprocessing else None
    if decision:
        decision[0].check_classes(models[0].recipe.class_names, decision[1])
    predictor = Predictor(models, options, decision[0] if decision else None)
    ran = predictor.recipe.with_changes(precision=predictor.precision)
    settings = {
        **ran.to_dict(),
        "tta": options.tta,
        "models": [str(Path(model.source).absolute()) for model in models],
        "postprocessing": {**decision[0].to_dict(), "file": str(Path(decision[1]).absolute())} if decision else None,
    }
    if predictor.runtime != "torch":  # an exported model run by another runtime: its labels may differ at near-ties
        settings["runtime"] = predictor.runtime
    with folder_lock(output):
        for folder in (output, output / PROBABILITIES_FOLDER, output / PREVIEWS_FOLDER):
            remove_stale_temporaries(folder)  # of a killed run: no other run writes here while the lock is held
        record = OutputRecord.for_run(output / RECIPE_FILE, settings, overwrite, [case.name for case in cases if outputs_exist(targets[case.name])])
        algorithm = dicom_seg_algorithm(ran.class_names, models) if output_format != "nifti" else None
        table = None
        if statistics or (output / STATISTICS_JSON).is_file():  # without --statistics too, so that rows of replaced labels go
            table = StatisticsTable.read(output, record.cases)
        # a rewritten case's other outputs (an earlier run's preview, probabilities or DICOM-SEG) would describe labels that are gone
        unasked = {case.name: [path for kind, path in case_outputs(case, output, "both", True, True).items() if kind not in targets[case.name]]
                   for case in cases}
        return run_cases(predictor, cases, targets, record, overwrite, output_format, algorithm, table if statistics else None, unasked)


def run_cases(
    predictor: Predictor, cases: Sequence[Case], targets: dict[str, dict[str, Path]], record: OutputRecord, overwrite: bool, output_format: str,
    algorithm: Algorithm | None, table: StatisticsTable | None = None, unasked: dict[str, list[Path]] | None = None,
) -> RunSummary:
    """Return the summary after segmenting the cases not yet made (all with `overwrite`), committing each case's outputs
    together, removing its ``unasked`` outputs of earlier runs, then listing it in the record, then putting its
    statistics in the ``table`` when there is one."""
    summary = RunSummary()
    todo = [case for case in cases if overwrite or not record.made(case.name, targets[case.name]) or (table is not None and not table.has(case.name))]
    summary.skipped = [case.name for case in cases if case not in todo]
    if output_format == "dicom-seg":
        summary.failed = [(case.name, NO_SOURCE_SERIES) for case in todo if not case.dicom]
        todo = [case for case in todo if case.dicom]
    elif output_format == "both" and any(not case.dicom for case in todo):
        print(f"{sum(not case.dicom for case in todo)} NIfTI scan(s) get a NIfTI label map only: a DICOM-SEG needs a DICOM series", file=sys.stderr)

    recipe = predictor.recipe

    def commit(prediction: Prediction, case: Case) -> None:
        # the scan's own intensities, read again: the predictor kept only their preprocessed copy
        channels = scan_channels(case, prediction.reference) if table is not None or "preview" in targets[case.name] else None
        write_prediction(prediction, case, targets[case.name], algorithm, channels, recipe.class_names)
        for path in (unasked or {}).get(case.name, []):
            path.unlink(missing_ok=True)
        record.add(case.name)
        if table is not None:
            table.add(case.name, class_statistics(prediction.labels, channels, prediction.reference.affine, recipe.class_names, recipe.channel_names))

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
            writes.append((case.name, writer.submit(commit, prediction, case)))
            progress.write(f"{case.name}: {prediction.route}", file=sys.stderr)
        for name, write in writes:
            try:
                write.result()
            except Exception as err:
                summary.failed.append((name, describe(err)))
            else:
                summary.done.append(name)
    return summary


@dataclass
class OutputRecord:
    """``recipe.json``: the settings the outputs it lists were made with, and those cases.

    Only a run that writes changes it (after each case's outputs are in place), so it never describes a run that
    made nothing. An output not listed (another run's, a run killed between the two writes) is not counted as made.
    """

    path: Path
    settings: dict[str, Any]
    cases: list[str]

    @classmethod
    def for_run(cls, path: Path, settings: dict[str, Any], overwrite: bool, existing: list[str]) -> OutputRecord:
        """Return the record a run with ``settings`` continues; a folder made with other settings is refused unless
        ``overwrite``, which starts a new record. A folder without a record, or one from before records listed cases,
        has its ``existing`` outputs counted as made with these settings, as before."""
        settings = json.loads(json.dumps(settings))  # as the file holds it: lists, not tuples
        if not path.is_file():
            return cls(path, settings, list(existing))
        try:
            old = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise MedsegError(f"{path}: not valid JSON ({err}); move it away, or use another --output folder") from None
        differences = [
            f"{key}: {old_flat.get(key, 'not recorded')} there, {new_flat.get(key, 'not recorded')} now"
            for old_flat, new_flat in [(flatten(old), flatten(settings))]
            for key in sorted(old_flat.keys() | new_flat.keys())
            if key not in NOT_COMPARED and old_flat.get(key) != new_flat.get(key)
        ]
        if differences and not overwrite:
            raise MedsegError(
                f"{path.parent} holds outputs made with other settings ({'; '.join(differences[:3])}"
                f"{'; ...' if len(differences) > 3 else ''}): run with those, use another --output folder, or --overwrite to redo every scan"
            )
        if differences:
            return cls(path, settings, [])
        return cls(path, settings, list(old["cases"]) if "cases" in old else list(existing))

    def made(self, name: str, paths: dict[str, Path]) -> bool:
        """Return whether every output of the case is in place and listed as made with these settings."""
        return name in self.cases and outputs_exist(paths)

    def add(self, name: str) -> None:
        """List the case, whose outputs were just written, and rewrite the record."""
        if name not in self.cases:
            self.cases.append(name)
        write_text_atomic(self.path, json.dumps({**self.settings, "cases": self.cases}, indent=2))


def flatten(record: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Return the record's values by dotted key ("window.overlap"), nested mappings opened."""
    flat: dict[str, Any] = {}
    for key, value in record.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


@contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Hold ``folder``'s lock file while the block runs; a second run into the folder is refused with one line.

    A kernel lock (``flock``) ends with its process, so a killed run's lock file is simply taken over. The file is
    removed on release, so the folder holds only outputs (``filelock`` leaves it); a run that locked a file another
    just removed locks the new one instead.
    """
    path = folder / LOCK_FILE
    try:
        folder.mkdir(parents=True, exist_ok=True)
        while True:
            descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(descriptor)
                raise MedsegError(f"another run is writing into {folder} (it holds {path}): wait for it to end, or use another --output folder") from None
            if path.exists() and os.path.samestat(os.fstat(descriptor), os.stat(path)):
                break
            os.close(descriptor)
    except OSError as err:
        raise write_error(err, [folder]) from None
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
        os.close(descriptor)


def dicom_seg_algorithm(class_names: Sequence[str], models: Sequence[TrainedModel]) -> Algorithm:
    """Return what DICOM-SEGs record about the run: class names and checkpoint file names (needs the DICOM extra)."""
    from medseg.io.dicom_seg import Algorithm

    return Algorithm(tuple(class_names), tuple(Path(model.source).name for model in models))


def case_outputs(case: Case, output: Path, output_format: str, probabilities: bool = False, preview: bool = False) -> dict[str, Path]:
    """Return the files a case's run writes, by kind: "labels" (NIfTI), "dicom-seg", "probabilities" (NIfTI) and
    "preview" (PNG).

    With "both", a NIfTI scan gets its NIfTI only: a DICOM-SEG references the DICOM series it segments."""
    kinds = {"nifti": ["labels"], "dicom-seg": ["dicom-seg"], "both": ["labels", "dicom-seg"] if case.dicom else ["labels"]}[output_format]
    files = {"labels": output / f"{case.name}.nii.gz", "dicom-seg": output / f"{case.name}{DICOM_SEG_SUFFIX}"}
    paths = {kind: files[kind] for kind in kinds}
    if probabilities:
        paths["probabilities"] = output / PROBABILITIES_FOLDER / f"{case.name}.nii.gz"
    if preview:
        paths["preview"] = output / PREVIEWS_FOLDER / f"{case.name}.png"
    return paths


def outputs_exist(paths: dict[str, Path]) -> bool:
    return all(path.exists() for path in paths.values())


def write_prediction(
    prediction: Prediction, case: Case, targets: dict[str, Path], algorithm: Algorithm | None = None,
    channels: Sequence[np.ndarray] | None = None, class_names: Sequence[str] = (),
) -> None:
    """Write the case's outputs (``case_outputs``) together: every temporary file first, then the renames, so a failure
    leaves none of them half written and none replaced. A DICOM-SEG needs the case's DICOM series and the
    ``algorithm`` that segmented it; a preview the scan's ``channels`` (``scan_channels``) and the ``class_names``."""
    with atomic_targets(list(targets.values())) as temps:
        for kind, temp in zip(targets, temps):
            if kind == "preview":
                from medseg.inference.preview import save_preview  # matplotlib loads only for previews

                save_preview(temp, prediction.labels, channels[0], prediction.reference.affine, class_names, case.name)
            elif kind == "dicom-seg":
                from medseg.io.dicom_seg import segmentation

                segmentation(prediction.labels, prediction.reference, case.name, case.images, algorithm).save_as(temp)
            else:
                nib.save(like_reference(prediction.probabilities if kind == "probabilities" else prediction.labels, prediction.reference), temp)


def describe(err: Exception) -> str:
    """Return a failure's reason as the summary prints it: a user error's own line, else its type and message."""
    return str(err) if isinstance(err, MedsegError) else f"{type(err).__name__}: {err}"
