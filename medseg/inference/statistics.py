"""Volume and mean intensity per class of each segmented scan (``medseg.infer --statistics``), as TotalSegmentator's
``--statistics`` gives them: ``OUTPUT/statistics.json`` and ``OUTPUT/statistics.csv`` for the whole output folder."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medseg.atomic import atomic_targets
from medseg.data.formats import Case
from medseg.errors import MedsegError
from medseg.io.nifti import NiftiImage, read_voxels

__all__ = ["STATISTICS_CSV", "STATISTICS_JSON", "StatisticsTable", "class_statistics", "scan_channels"]

STATISTICS_JSON = "statistics.json"
STATISTICS_CSV = "statistics.csv"
MM3_PER_ML = 1000.0


def scan_channels(case: Case, reference: NiftiImage) -> list[np.ndarray]:
    """Return the scan's channels (X, Y, Z) as its files hold them (scaling applied, not preprocessed), on the grid of
    its label map. A DICOM series is its ``reference``, the image read from it (in Hounsfield units for CT)."""
    volumes = [np.asanyarray(reference.dataobj)] if case.dicom else [read_voxels(path)[1] for path in case.images]
    return [channel for volume in volumes for channel in (np.moveaxis(volume, 3, 0) if volume.ndim == 4 else [volume])]


def class_statistics(
    labels: np.ndarray, channels: Sequence[np.ndarray], affine: np.ndarray, class_names: Sequence[str], channel_names: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """Return, per foreground class name: ``voxels``, ``volume_ml`` and ``mean_intensity`` (channel name -> mean, None
    for an empty class).

    The voxel volume is the absolute determinant of ``affine``'s 3x3 part, so sheared and oblique grids are measured
    exactly; ``labels`` and ``channels`` lie on that grid.
    """
    ml_per_voxel = abs(float(np.linalg.det(np.asarray(affine, np.float64)[:3, :3]))) / MM3_PER_ML
    # only foreground voxels are counted: a weighted bincount over a whole CT takes seconds, the mask a fraction of one
    foreground = labels > 0
    classes = labels[foreground]
    counts = np.bincount(classes, minlength=len(class_names))
    sums = [np.bincount(classes, weights=channel[foreground], minlength=len(class_names)) for channel in channels]
    return {
        name: {
            "voxels": int(counts[value]),
            "volume_ml": float(counts[value] * ml_per_voxel),
            "mean_intensity": {channel: float(total[value] / counts[value]) if counts[value] else None for channel, total in zip(channel_names, sums)},
        }
        for value, name in enumerate(class_names)
        if value
    }


class StatisticsTable:
    """The statistics of every case made in an output folder, rewritten (JSON and CSV together, atomically) as each
    case finishes. Rows of cases made earlier with the same settings are read back and kept, the others taken out."""

    def __init__(self, folder: Path, cases: dict[str, dict[str, Any]]) -> None:
        self.folder = Path(folder)
        self.cases = cases

    @classmethod
    def read(cls, folder: Path, made: Collection[str]) -> StatisticsTable:
        """Return the folder's table, keeping only the cases in ``made`` (listed in ``recipe.json`` as made with this
        run's settings; the files are rewritten at once without the others, whose labels are being replaced); an empty
        one where there is no ``statistics.json``."""
        path = Path(folder) / STATISTICS_JSON
        if not path.is_file():
            return cls(folder, {})
        try:
            cases = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise MedsegError(f"{path}: not valid JSON ({err}); move it away and rerun to write it again") from None
        if not isinstance(cases, dict):
            raise MedsegError(f"{path}: not a statistics file (case -> class -> values); move it away and rerun to write it again")
        table = cls(folder, {name: values for name, values in cases.items() if name in made})
        if len(table.cases) < len(cases):
            table._write()
        return table

    def has(self, name: str) -> bool:
        return name in self.cases

    def add(self, name: str, statistics: dict[str, dict[str, Any]]) -> None:
        """Put the case's statistics (``class_statistics``) in the table and rewrite both files."""
        self.cases[name] = statistics
        self._write()

    def _write(self) -> None:
        ordered = dict(sorted(self.cases.items()))
        with atomic_targets([self.folder / STATISTICS_JSON, self.folder / STATISTICS_CSV]) as (json_temp, csv_temp):
            json_temp.write_text(json.dumps(ordered, indent=2) + "\n")
            csv_temp.write_text(table_csv(ordered))


def table_csv(cases: dict[str, dict[str, dict[str, Any]]]) -> str:
    """Return one CSV row per case and class: case, class, voxels, volume_ml, then mean_intensity_<channel> per channel
    (empty for an empty class)."""
    channels = list(dict.fromkeys(channel for classes in cases.values() for values in classes.values() for channel in values["mean_intensity"]))
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["case", "class", "voxels", "volume_ml", *(f"mean_intensity_{channel}" for channel in channels)])
    for case, classes in cases.items():
        for name, values in classes.items():
            means = [values["mean_intensity"].get(channel) for channel in channels]
            writer.writerow([case, name, values["voxels"], values["volume_ml"], *("" if mean is None else mean for mean in means)])
    return text.getvalue()
