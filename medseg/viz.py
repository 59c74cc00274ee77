"""Pictures of data, predictions, training runs and memory plans, shared by the notebooks and the CLI reports.

Every plotting function returns a ``matplotlib.figure.Figure`` built without pyplot, so it needs no display
(Agg-safe in CI and on servers), leaves the caller's pyplot state alone, and shows inline in Jupyter when it
is a cell's last value. Volumes are (X, Y, Z) arrays (a leading channel axis of 1 is dropped) in RAS voxel
order, as ``load_volume`` and medseg's preprocessing give them; slices are then shown with the patient's right
on the viewer's right (neurological convention) and superior or anterior up.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from numpy.typing import ArrayLike

from medseg.data.formats import Case
from medseg.io.nifti import in_ras_order, read_voxels

MiB = 2**20
PLANES = ("sagittal", "coronal", "axial")
# Colours of label values 1, 2, ... (tab10 without its grey); label maps with more classes cycle through them.
CLASS_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf")
BACKGROUND_COLOUR = "#7f7f7f"
OVERLAY_ALPHA = 0.45


@dataclass(frozen=True)
class Volume:
    """A 3D image with an optional label map on the same voxel grid, and its voxel spacing in mm.

    Attributes:
        image: (X, Y, Z) intensities, or (1, X, Y, Z); numpy arrays and CPU torch tensors both work.
        label: class indices on the image's grid, or None for the image alone.
        spacing: voxel size in mm along X, Y, Z, so that slices keep their true proportions.
    """

    image: ArrayLike
    label: ArrayLike | None = None
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)


def _as_3d(values: ArrayLike) -> np.ndarray:
    """Return `values` as a 3D numpy array, dropping a leading channel axis of size 1."""
    array = np.asarray(values)
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 3:
        raise ValueError(f"expected a 3D volume (X, Y, Z) or (1, X, Y, Z), got shape {array.shape}")
    return array


def class_colour(value: int) -> str:
    """Return the colour of label `value` in every figure (overlays, legends, histograms); background is grey."""
    return BACKGROUND_COLOUR if value == 0 else CLASS_COLOURS[(value - 1) % len(CLASS_COLOURS)]


def class_colours(num_classes: int) -> ListedColormap:
    """Return the overlay colour map of label values 0..num_classes-1, background fully transparent."""
    colours = [(0.0, 0.0, 0.0, 0.0)] + [class_colour(value) for value in range(1, num_classes)]
    return ListedColormap(colours, name="medseg_classes")


def foreground_centre(label: ArrayLike) -> tuple[int, int, int]:
    """Return the voxel at the centre of the labelled region's bounding box (the volume centre if nothing is labelled).

    Slicing through it shows every class in all three planes more often than the volume centre does.
    """
    array = _as_3d(label)
    found = np.argwhere(array > 0)
    if found.size == 0:
        return tuple(int(n // 2) for n in array.shape)
    return tuple(int(v) for v in (found.min(axis=0) + found.max(axis=0)) // 2)


def _plane(volume: np.ndarray, plane: int, index: int) -> np.ndarray:
    """Return the 2D slice at `index` across axis `plane`, transposed so the first remaining axis runs left to right."""
    return np.take(volume, index, axis=plane).T


def _show_slice(axes: Axes, volume: Volume, plane: int, index: int, window: tuple[float, float], num_classes: int) -> None:
    image = _as_3d(volume.image)
    kept = [axis for axis in range(3) if axis != plane]
    # aspect = height / width of one pixel, so anisotropic scans are not squashed
    aspect = volume.spacing[kept[1]] / volume.spacing[kept[0]]
    axes.imshow(_plane(image, plane, index), cmap="gray", vmin=window[0], vmax=window[1], origin="lower", aspect=aspect)
    if volume.label is not None:
        label = _plane(_as_3d(volume.label), plane, index)
        axes.imshow(
            np.ma.masked_equal(label, 0), cmap=class_colours(num_classes), vmin=-0.5, vmax=num_classes - 0.5,
            alpha=OVERLAY_ALPHA, origin="lower", aspect=aspect, interpolation="nearest",
        )
    axes.set_xticks([])
    axes.set_yticks([])


def plot_slices(
    volumes: Mapping[str, Volume],
    class_names: Sequence[str],
    centre: Sequence[int] | None = None,
    window: tuple[float, float] | None = None,
) -> Figure:
    """Return one row per volume of sagittal, coronal and axial slices, labels overlaid in colour, with a class legend.

    Args:
        volumes: row title -> volume; rows may differ in shape and spacing (raw scan, preprocessed, patch).
        class_names: names by label value, background first; the legend lists the foreground classes.
        centre: voxel (x, y, z) the slices cross; None centres each row on its labelled region.
        window: (low, high) grey-scale range; None uses each row's 1st and 99th intensity percentiles.
    """
    if not volumes:
        raise ValueError("plot_slices needs at least one volume")
    figure = Figure(figsize=(10, 3.2 * len(volumes)), layout="constrained")
    grid = figure.subplots(len(volumes), len(PLANES), squeeze=False)
    for row, (title, volume) in zip(grid, volumes.items()):
        image = _as_3d(volume.image)
        row_centre = centre or (foreground_centre(volume.label) if volume.label is not None else [n // 2 for n in image.shape])
        row_window = window or tuple(float(v) for v in np.percentile(image, [1, 99]))
        for plane, axes in enumerate(row):
            index = min(int(row_centre[plane]), image.shape[plane] - 1)
            _show_slice(axes, volume, plane, index, row_window, len(class_names))
            axes.set_title(f"{title}: {PLANES[plane]} {index}", fontsize=9)
    handles = [Patch(color=class_colour(value), alpha=OVERLAY_ALPHA, label=name) for value, name in enumerate(class_names) if value]
    figure.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 6))
    return figure


def load_volume(image_path: str | Path, label: str | Path | ArrayLike | None = None) -> Volume:
    """Return a scan's first channel and a label map, both turned to RAS voxel order, for plotting.

    Args:
        image_path: NIfTI scan (3D, or 4D with channels last).
        label: a label file, or an array in the scan's own voxel order (what ``predict_volume`` returns).
    """
    image, voxels = read_voxels(image_path)
    # io_orientation maps each file axis to its RAS axis and direction; apply_orientation reorders the voxels
    orientation = nib.orientations.io_orientation(image.affine)
    voxels = np.asarray(voxels, dtype=np.float32)
    voxels = voxels[..., 0] if voxels.ndim == 4 else voxels
    labels = None
    if label is not None:
        labels = read_voxels(label)[1] if isinstance(label, (str, Path)) else np.asarray(label)
        labels = nib.orientations.apply_orientation(labels[..., 0] if labels.ndim == 4 else labels, orientation)
    spacing = in_ras_order([float(zoom) for zoom in image.header.get_zooms()[:3]], image.affine)
    return Volume(nib.orientations.apply_orientation(voxels, orientation), labels, spacing)


def plot_prediction_vs_truth(truth: Volume, prediction: ArrayLike, class_names: Sequence[str]) -> Figure:
    """Return the ground truth (top row) and the prediction (bottom row) overlaid on the same slices of the scan.

    Args:
        truth: the scan with its ground-truth label.
        prediction: predicted class indices on the same voxel grid as ``truth``.
        class_names: names by label value, background first.

    Both rows cross the centre of the ground truth's labelled region, so a missed structure shows as an empty overlay.
    """
    if truth.label is None:
        raise ValueError("plot_prediction_vs_truth needs the ground-truth label in `truth`")
    rows = {"ground truth": truth, "prediction": Volume(truth.image, prediction, truth.spacing)}
    return plot_slices(rows, class_names, centre=foreground_centre(truth.label))


def plot_class_histograms(image: ArrayLike, label: ArrayLike, class_names: Sequence[str], bins: int = 100) -> Figure:
    """Return the intensity histogram of each class present in `label`, as densities so small classes stay visible.

    Overlap between the curves is what the network has to resolve from context rather than intensity.
    """
    values, classes = _as_3d(image).ravel(), _as_3d(label).ravel()
    edges = np.histogram_bin_edges(values, bins=bins)
    figure = Figure(figsize=(7, 4), layout="constrained")
    axes = figure.subplots()
    for value, name in enumerate(class_names):
        inside = values[classes == value]
        if inside.size:
            density, _ = np.histogram(inside, bins=edges, density=True)
            axes.stairs(density, edges, label=f"{name} ({inside.size} voxels)", color=class_colour(value), linewidth=1.5)
    axes.set_xlabel("intensity")
    axes.set_ylabel("density")
    axes.set_yscale("log")
    axes.set_title("Intensity per class")
    axes.legend()
    return figure


def read_metrics(metrics_csv: str | Path) -> dict[str, tuple[list[int], list[float]]]:
    """Return each logged metric of a Lightning CSVLogger ``metrics.csv`` as (steps, values), blank cells skipped."""
    path = Path(metrics_csv)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no metrics.csv here (a run's log folder holds one, e.g. runs/medseg/version_0/)")
    series: dict[str, tuple[list[int], list[float]]] = {}
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            for name, cell in row.items():
                if name in ("epoch", "step") or cell in ("", None):
                    continue
                steps, values = series.setdefault(name, ([], []))
                steps.append(int(row["step"]))
                values.append(float(cell))
    return series


EPOCH_SECONDS = "epoch_seconds"  # each epoch's wall time, training and its validation (medseg.training.progress_plot)
LEARNING_RATE_PREFIX = "lr-"  # Lightning's LearningRateMonitor: lr-<optimizer>


def plot_training_curves(metrics_csv: str | Path, class_names: Sequence[str] | None = None) -> Figure:
    """Return a run's progress as nnU-Net's progress.png shows it, against the training step: losses (training, and
    validation where logged), validation Dice per class and mean, learning rate, and epoch duration.

    Args:
        metrics_csv: the ``metrics.csv`` that training's CSVLogger writes into the run folder.
        class_names: names by label value, background first; given, the Dice curves take the classes'
            overlay colours and order, otherwise every logged ``val_dice_<class>`` is drawn in name order.

    A panel whose values the file lacks (a run from before they were logged) says so instead of a curve.
    """
    series = read_metrics(metrics_csv)
    figure = Figure(figsize=(11, 7), layout="constrained")
    (loss_axes, dice_axes), (rate_axes, time_axes) = figure.subplots(2, 2, sharex=True)
    for name in ("train_loss_step", "train_loss_epoch", "val_loss"):
        if name in series:
            marker = "" if name.endswith("step") else "o"
            loss_axes.plot(*series[name], marker=marker, label=name)
    if class_names is None:
        colours = {name.removeprefix("val_dice_"): None for name in sorted(series) if name.startswith("val_dice_")}
    else:
        colours = {name: class_colour(value) for value, name in enumerate(class_names) if value}
    for name, colour in colours.items():
        if f"val_dice_{name}" in series:
            dice_axes.plot(*series[f"val_dice_{name}"], marker="o", color=colour, label=f"dice {name}")
    if "val_mean_dice" in series:
        dice_axes.plot(*series["val_mean_dice"], marker="o", color="black", linewidth=2.5, label="mean dice")
    for name in sorted(name for name in series if name.startswith(LEARNING_RATE_PREFIX)):
        rate_axes.plot(*series[name], label=name.removeprefix(LEARNING_RATE_PREFIX))
    if EPOCH_SECONDS in series:
        time_axes.plot(*series[EPOCH_SECONDS], marker="o", color="black", label=EPOCH_SECONDS)
    loss_axes.set(title="Loss", ylabel="Dice + cross-entropy")
    dice_axes.set(title="Validation Dice (whole volumes on the training grid)", ylabel="Dice", ylim=(0, 1))
    rate_axes.set(title="Learning rate", xlabel="training step", ylabel="learning rate")
    time_axes.set(title="Epoch duration (training and its validation)", xlabel="training step", ylabel="seconds")
    for axes in (loss_axes, dice_axes, rate_axes, time_axes):
        if axes.lines:
            axes.legend()
        else:
            axes.text(0.5, 0.5, "not in metrics.csv", transform=axes.transAxes, ha="center", va="center", color="grey")
    return figure


def plot_score_comparison(scores: Mapping[str, Mapping[str, float]], metric: str = "Dice") -> Figure:
    """Return one group of bars per class, one bar per way of predicting (e.g. a single fold against the ensemble).

    Args:
        scores: way -> class name -> mean score (``Evaluation.class_means``); every way names the same classes.
        metric: the score's name, for the axis ("Dice" is drawn on [0, 1]).
    """
    ways = list(scores)
    classes = list(scores[ways[0]])
    figure = Figure(figsize=(max(5, 1.6 * len(classes) * len(ways) / 2 + 2), 4), layout="constrained")
    axes = figure.subplots()
    width = 0.8 / len(ways)
    for offset, way in enumerate(ways):
        positions = [index + (offset - (len(ways) - 1) / 2) * width for index in range(len(classes))]
        bars = axes.bar(positions, [scores[way][name] for name in classes], width, label=way)
        axes.bar_label(bars, fmt="%.3f", fontsize=8)
    axes.set_xticks(range(len(classes)), classes)
    axes.set(ylabel=metric)
    if metric == "Dice":
        axes.set_ylim(0, 1.05)
    figure.legend(loc="outside upper center", ncols=len(ways))
    return figure


def case_summary(case: Case, class_names: Sequence[str]) -> dict[str, object]:
    """Return one row of the dataset table: shape, spacing, orientation, intensity range and label volume per class (ml).

    Reads the case's first image file and its label; the label volumes show class imbalance before training.
    """
    image, voxels = read_voxels(case.images[0])
    _, label = read_voxels(case.label)
    spacing = tuple(float(z) for z in image.header.get_zooms()[:3])
    voxel_ml = math.prod(spacing) / 1000.0
    row: dict[str, object] = {
        "case": case.name,
        "shape": "x".join(str(n) for n in image.shape),
        "spacing_mm": "x".join(f"{s:.2f}" for s in spacing),
        "orientation": "".join(nib.aff2axcodes(image.affine)),
        "intensity": f"{voxels.min():.0f}..{voxels.max():.0f}",
    }
    row.update({f"{name}_ml": round(float((label == value).sum()) * voxel_ml, 1) for value, name in enumerate(class_names) if value})
    return row
