"""progress.png: every run folder gets nnU-Net's picture of its curves (loss, Dice per class, learning rate, epoch
duration), drawn from metrics.csv; a drawing that fails is one warning and training goes on."""

from __future__ import annotations

import logging
from types import SimpleNamespace

from lightning.pytorch.loggers import CSVLogger

from medseg.training import progress_plot
from medseg.training.progress_plot import PROGRESS_FILE, ProgressPlot
from medseg.viz import plot_training_curves

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_a_run_folder_has_progress_png_with_loss_dice_learning_rate_and_epoch_duration(_trained_runs):
    run = _trained_runs(False).log_dir
    assert (run / PROGRESS_FILE).read_bytes().startswith(PNG_SIGNATURE)
    figure = plot_training_curves(run / "metrics.csv", ["background", "organ", "lesion"])  # what the callback draws
    panels = {axes.get_title(): [line.get_label() for line in axes.lines] for axes in figure.axes}
    assert panels == {
        "Loss": ["train_loss_epoch"],
        "Validation Dice (whole volumes on the training grid)": ["dice organ", "dice lesion", "mean dice"],
        "Learning rate": ["AdamW"],
        "Epoch duration (training and its validation)": ["epoch_seconds"],
    }
    assert len(figure.axes[3].lines[0].get_xdata()) == 2  # both epochs


def test_a_drawing_that_fails_is_one_warning_and_returns_nothing(tmp_path, monkeypatch, caplog):
    logger = CSVLogger(tmp_path, name="medseg", version=0)
    (tmp_path / "medseg" / "version_0").mkdir(parents=True)
    (tmp_path / "medseg" / "version_0" / "metrics.csv").write_text("epoch,step,train_loss_epoch\n0,2,1.5\n")
    trainer, module = SimpleNamespace(loggers=[logger], is_global_zero=True), SimpleNamespace()

    def broken(*args, **kwargs):
        raise RuntimeError("no fonts")

    monkeypatch.setattr(progress_plot, "plot_training_curves", broken)
    caplog.set_level(logging.WARNING)
    plot = ProgressPlot()
    assert plot.draw(trainer, module) is None and plot.draw(trainer, module) is None
    target = tmp_path / "medseg" / "version_0" / PROGRESS_FILE
    assert [r.getMessage() for r in caplog.records] == [f"{target}: not drawn (RuntimeError: no fonts); training goes on, metrics.csv has every value"]
    monkeypatch.undo()
    assert plot.draw(trainer, module) == target and target.read_bytes().startswith(PNG_SIGNATURE)
