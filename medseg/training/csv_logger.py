"""Lightning's CSV logger, except that a resumed run adds to its metrics.csv instead of deleting it."""

from __future__ import annotations

import csv

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter


class AppendingWriter(ExperimentWriter):
    """Lightning's metrics.csv writer, continuing a metrics.csv already in its folder (Lightning's deletes it).

    Rows are appended under the file's header; a metric the file has no column for yet widens the header, with
    every earlier row kept (Lightning's ``save`` rewrites the file then).
    """

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                self.metrics_keys = list(csv.DictReader(file).fieldnames or [])


class AppendingCSVLogger(CSVLogger):
    """Lightning's ``CSVLogger`` (same arguments), whose run folder keeps its metrics history when a run resumes in it."""

    @property
    @rank_zero_experiment
    def experiment(self) -> AppendingWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = AppendingWriter(log_dir=self.log_dir)
        return self._experiment
