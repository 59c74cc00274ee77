"""The CSV logger of a run that resumes in its folder: metrics.csv keeps its rows, new ones come after them."""

from __future__ import annotations

import csv

from medseg.training.csv_logger import AppendingCSVLogger


def _rows(logger: AppendingCSVLogger) -> list[dict[str, str]]:
    with open(f"{logger.log_dir}/metrics.csv", newline="") as file:
        return list(csv.DictReader(file))


def test_a_logger_in_a_folder_with_metrics_appends_and_widens_the_header(tmp_path):
    first = AppendingCSVLogger(tmp_path, name="run", version=0)
    first.log_metrics({"train_loss": 1.5}, step=0)
    first.save()
    resumed = AppendingCSVLogger(tmp_path, name="run", version=0)
    resumed.log_metrics({"train_loss": 1.25}, step=1)
    resumed.log_metrics({"val_mean_dice": 0.5}, step=1)  # a column the file does not have yet
    resumed.save()
    assert _rows(resumed) == [
        {"step": "0", "train_loss": "1.5", "val_mean_dice": ""},
        {"step": "1", "train_loss": "1.25", "val_mean_dice": ""},
        {"step": "1", "train_loss": "", "val_mean_dice": "0.5"},
    ]
