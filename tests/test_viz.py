"""The figures medseg.viz returns: their axes, lines, colour overlays and legends, checked without a display."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import nibabel as nib
import numpy as np
import pytest
import torch
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure

from medseg import viz
from medseg.planning.report import plot_memory
from medseg.data.formats import read_dataset

CLASSES = ("background", "organ", "lesion")

METRICS_CSV = """epoch,step,train_loss_epoch,train_loss_step,val_dice_lesion,val_dice_organ,val_mean_dice
0,0,,1.83,,,
0,1,,1.76,,,
0,1,,,0.03,0.31,0.17
0,1,1.79,,,,
1,2,,1.71,,,
1,3,,1.68,,,
1,3,,,0.04,0.37,0.20
1,3,1.69,,,,
"""


def _volume(shape=(20, 16, 12)) -> tuple[np.ndarray, np.ndarray]:
    """Return a ramp image and a label with one box per foreground class."""
    image = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    label = np.zeros(shape, np.uint8)
    label[4:10, 4:10, 3:8] = 1
    label[10:14, 6:12, 3:8] = 2
    return image, label


def _overlays(figure: Figure) -> list:
    """Return the label images drawn over the grey scans (the second image of each axes)."""
    return [axes.images[1] for axes in figure.axes if len(axes.images) == 2]


def _legend_labels(figure: Figure) -> list[str]:
    legends = figure.legends or [axes.get_legend() for axes in figure.axes if axes.get_legend()]
    return [text.get_text() for legend in legends for text in legend.get_texts()]


def test_slices_show_three_planes_per_volume_with_colour_overlay_and_class_legend():
    image, label = _volume()
    figure = viz.plot_slices({"scan": viz.Volume(image, label), "copy": viz.Volume(image, label)}, CLASSES)
    assert isinstance(figure, Figure) and len(figure.axes) == 6
    overlays = _overlays(figure)
    assert len(overlays) == 6
    colours = overlays[0].cmap(overlays[0].norm(np.array([0, 1, 2])))
    assert colours[0][3] == 0.0  # background transparent
    assert np.allclose(colours[1], to_rgba(viz.CLASS_COLOURS[0])) and np.allclose(colours[2], to_rgba(viz.CLASS_COLOURS[1]))
    assert {int(v) for v in np.unique(overlays[2].get_array().compressed())} == {1, 2}  # axial slice crosses both classes
    assert _legend_labels(figure) == ["organ", "lesion"]


def test_slices_without_label_draw_the_image_alone():
    image, _ = _volume()
    figure = viz.plot_slices({"scan": viz.Volume(image)}, CLASSES)
    assert [len(axes.images) for axes in figure.axes] == [1, 1, 1]


def test_slices_accept_channel_first_tensors_and_keep_voxel_proportions():
    image, label = _volume()
    volume = viz.Volume(torch.from_numpy(image)[None], torch.from_numpy(label)[None], spacing=(1.0, 1.0, 3.0))
    sagittal, coronal, axial = viz.plot_slices({"scan": volume}, CLASSES).axes
    assert sagittal.get_aspect() == 3.0 and coronal.get_aspect() == 3.0 and axial.get_aspect() == 1.0


def test_slices_refuse_a_volume_that_is_not_3d():
    with pytest.raises(ValueError, match=r"shape \(4, 4\)"):
        viz.plot_slices({"flat": viz.Volume(np.zeros((4, 4)))}, CLASSES)


def test_foreground_centre_is_the_labelled_box_centre_or_the_volume_centre():
    _, label = _volume()
    assert viz.foreground_centre(label) == (8, 7, 5)
    assert viz.foreground_centre(np.zeros((10, 8, 6))) == (5, 4, 3)


def test_prediction_and_truth_share_slices_through_the_truth():
    image, truth = _volume()
    prediction = np.zeros_like(truth)
    figure = viz.plot_prediction_vs_truth(viz.Volume(image, truth), prediction, CLASSES)
    titles = [axes.get_title() for axes in figure.axes]
    assert titles[:3] == ["ground truth: sagittal 8", "ground truth: coronal 7", "ground truth: axial 5"]
    assert [t.split(": ")[1] for t in titles[3:]] == [t.split(": ")[1] for t in titles[:3]]
    truth_overlay, predicted_overlay = _overlays(figure)[0], _overlays(figure)[3]
    assert truth_overlay.get_array().count() > 0 and predicted_overlay.get_array().count() == 0


def test_prediction_needs_a_ground_truth():
    image, _ = _volume()
    with pytest.raises(ValueError, match="ground-truth"):
        viz.plot_prediction_vs_truth(viz.Volume(image), np.zeros(image.shape), CLASSES)


def test_loaded_volume_is_in_ras_order_with_matching_spacing_and_labels(tmp_path):
    image, label = _volume()
    affine = np.diag([-1.0, -2.0, 3.0, 1.0])  # L, P, S: x and y flipped
    nib.save(nib.Nifti1Image(image, affine), tmp_path / "scan.nii.gz")
    nib.save(nib.Nifti1Image(label, affine), tmp_path / "label.nii.gz")
    from_file = viz.load_volume(tmp_path / "scan.nii.gz", tmp_path / "label.nii.gz")
    from_array = viz.load_volume(tmp_path / "scan.nii.gz", label)
    assert from_file.spacing == (1.0, 2.0, 3.0)
    np.testing.assert_array_equal(from_file.image, image[::-1, ::-1, :])
    np.testing.assert_array_equal(from_file.label, label[::-1, ::-1, :])
    np.testing.assert_array_equal(from_array.label, from_file.label)


def test_loaded_volume_spacing_follows_swapped_axes(tmp_path):
    image, _ = _volume()
    affine = np.array([[0.0, 2.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 3.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    nib.save(nib.Nifti1Image(image, affine), tmp_path / "scan.nii.gz")
    volume = viz.load_volume(tmp_path / "scan.nii.gz")
    assert volume.spacing == (2.0, 1.0, 3.0) and volume.image.shape == (16, 20, 12) and volume.label is None


def test_class_histograms_have_one_curve_per_class_present():
    image, label = _volume()
    label[label == 2] = 0
    figure = viz.plot_class_histograms(image, label, CLASSES, bins=20)
    (axes,) = figure.axes
    assert len(axes.patches) == 2
    assert [t.split(" (")[0] for t in _legend_labels(figure)] == ["background", "organ"]
    assert [to_rgba(patch.get_edgecolor()) for patch in axes.patches] == [to_rgba(viz.class_colour(0)), to_rgba(viz.class_colour(1))]


def test_training_curves_plot_losses_and_dice_per_class_against_step(tmp_path):
    (tmp_path / "metrics.csv").write_text(METRICS_CSV)
    loss_axes, dice_axes, rate_axes, time_axes = viz.plot_training_curves(tmp_path / "metrics.csv").axes
    assert [line.get_label() for line in loss_axes.lines] == ["train_loss_step", "train_loss_epoch"]
    assert list(loss_axes.lines[0].get_xdata()) == [0, 1, 2, 3]
    assert [line.get_label() for line in dice_axes.lines] == ["dice lesion", "dice organ", "mean dice"]
    assert list(dice_axes.lines[2].get_ydata()) == [0.17, 0.20]
    # a run from before the learning rate and epoch duration were logged: their panels say so
    assert not rate_axes.lines and [t.get_text() for t in rate_axes.texts] == ["not in metrics.csv"] and not time_axes.lines


def test_training_curves_take_the_class_colours_and_order_when_given_class_names(tmp_path):
    (tmp_path / "metrics.csv").write_text(METRICS_CSV)
    _, dice_axes, _, _ = viz.plot_training_curves(tmp_path / "metrics.csv", CLASSES).axes
    assert [line.get_label() for line in dice_axes.lines] == ["dice organ", "dice lesion", "mean dice"]
    assert [to_rgba(line.get_color()) for line in dice_axes.lines[:2]] == [to_rgba(viz.class_colour(1)), to_rgba(viz.class_colour(2))]


def test_metrics_skip_blank_cells_and_missing_file_is_named(tmp_path):
    (tmp_path / "metrics.csv").write_text(METRICS_CSV)
    assert viz.read_metrics(tmp_path / "metrics.csv")["train_loss_epoch"] == ([1, 3], [1.79, 1.69])
    with pytest.raises(FileNotFoundError, match="nowhere"):
        viz.read_metrics(tmp_path / "nowhere" / "metrics.csv")


def test_memory_plot_has_one_line_per_precision_and_the_budget_line():
    peaks = {"32-true": {1: 300 * viz.MiB, 4: 900 * viz.MiB, 2: 500 * viz.MiB}, "16-mixed": {1: 200 * viz.MiB, 2: 300 * viz.MiB}}
    (axes,) = plot_memory(peaks, budget_bytes=1024 * viz.MiB).axes
    assert len(axes.lines) == 3
    fp32, amp, budget = axes.lines
    assert list(fp32.get_xdata()) == [1, 2, 4] and list(fp32.get_ydata()) == [300, 500, 900]
    assert list(budget.get_ydata()) == [1024, 1024]
    assert [t.get_text() for t in axes.get_legend().get_texts()] == ["32-true", "16-mixed", "budget 1024 MiB"]


def test_memory_plot_without_budget_draws_only_the_precisions():
    (axes,) = plot_memory({"32-true": {1: 1.0, 2: 2.0}}).axes
    assert len(axes.lines) == 1


def test_case_summary_reports_geometry_and_label_volumes(demo_root):
    spec = read_dataset(demo_root)
    row = viz.case_summary(spec.cases[0], spec.class_names)
    assert list(row) == ["case", "shape", "spacing_mm", "orientation", "intensity", "organ_ml", "lesion_ml"]
    assert row["case"] == "phantom_000" and row["orientation"] == "LPS"
    assert row["organ_ml"] > 0 and row["lesion_ml"] > 0


def test_score_comparison_draws_a_bar_per_way_and_class_with_its_value():
    scores = {"best single fold": {"organ": 0.9, "lesion": 0.5}, "5-fold ensemble": {"organ": 0.92, "lesion": 0.55}}
    figure = viz.plot_score_comparison(scores, "Dice")
    axes = figure.axes[0]
    heights = [round(bar.get_height(), 3) for container in axes.containers for bar in container]
    assert heights == [0.9, 0.5, 0.92, 0.55]
    assert [label.get_text() for label in axes.get_xticklabels()] == ["organ", "lesion"]
    assert [text.get_text() for text in figure.legends[0].get_texts()] == list(scores)
    assert axes.get_ylim() == (0, 1.05)
