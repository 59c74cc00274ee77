"""A picture to check a segmentation at a glance (``medseg.infer --preview``): axial, coronal and sagittal slices through
the centre of the largest structure, labels overlaid, as TotalSegmentator's ``--preview`` gives one."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from scipy import ndimage

from medseg.io.nifti import in_ras_order
from medseg.viz import OVERLAY_ALPHA, class_colour, class_colours

__all__ = ["PREVIEW_DPI", "PREVIEW_INCHES", "display_slices", "largest_structure_centre", "save_preview"]

PREVIEW_INCHES = (12.0, 4.8)
PREVIEW_DPI = 100  # 1200 x 480 pixels
# (plane, the RAS axis it cuts, the RAS axes drawn across and up, and the patient sides on the viewer's left and right)
PLANES = (("axial", 2, (0, 1), ("R", "L")), ("coronal", 1, (0, 2), ("R", "L")), ("sagittal", 0, (1, 2), ("A", "P")))


def largest_structure_centre(labels: np.ndarray) -> tuple[int, int, int]:
    """Return the voxel of the largest structure (the largest connected part of the class with most voxels) nearest its
    centre of mass; the volume's centre when nothing is labelled."""
    counts = np.bincount(labels[labels > 0])
    if len(counts) < 2:
        return tuple(int(n // 2) for n in labels.shape)
    parts, found = ndimage.label(labels == 1 + int(np.argmax(counts[1:])), structure=np.ones((3, 3, 3)))
    largest = 1 + int(np.argmax(np.bincount(parts.ravel(), minlength=found + 1)[1:]))
    box = ndimage.find_objects(parts, largest)[largest - 1]  # the rest works inside the structure's bounding box
    inside = parts[box] == largest
    centre = np.round(ndimage.center_of_mass(inside)).astype(int)
    if not inside[tuple(centre)]:  # a curved structure: its voxel nearest the centre of mass
        voxels = np.argwhere(inside)
        centre = voxels[np.argmin(((voxels - centre) ** 2).sum(axis=1))]
    return tuple(int(v) + part.start for v, part in zip(centre, box))


def display_slices(volume: np.ndarray, centre: Sequence[int]) -> list[np.ndarray]:
    """Return the axial, coronal and sagittal slices of a (X, Y, Z) volume in RAS voxel order through ``centre``, as
    ``imshow(origin="lower")`` shows them in radiological display: the patient's right (and, on the sagittal, anterior)
    on the viewer's left, anterior (axial) or superior up."""
    return [volume[tuple(centre[axis] if index == axis else slice(None) for index in range(3))].T[:, ::-1] for _, axis, _, _ in PLANES]


def save_preview(
    path: Path, labels: np.ndarray, image: np.ndarray, affine: np.ndarray, class_names: Sequence[str], title: str
) -> None:
    """Write the preview PNG of a label map and the scan's first channel (both (X, Y, Z) on the grid of ``affine``).

    Both are turned to RAS voxel order (the nearest to the oblique grid, as viewers show one), and each slice keeps the
    true proportions of its voxels. The grey scale spans the 1st to 99th percentile of the three slices.
    """
    orientation = nib.orientations.io_orientation(affine)
    labels = nib.orientations.apply_orientation(labels, orientation)
    image = nib.orientations.apply_orientation(image, orientation)
    spacing = in_ras_order([float(s) for s in np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))], affine)
    centre = largest_structure_centre(labels)
    images, overlays = display_slices(image, centre), display_slices(labels, centre)
    low, high = np.percentile(np.concatenate([s.ravel() for s in images]), [1, 99])
    figure = Figure(figsize=PREVIEW_INCHES, dpi=PREVIEW_DPI, layout="constrained")
    figure.suptitle(title)
    for axes, (name, axis, (across, up), (left, right)), grey, overlay in zip(figure.subplots(1, len(PLANES)), PLANES, images, overlays):
        aspect = spacing[up] / spacing[across]  # height / width of one pixel
        axes.imshow(grey, cmap="gray", vmin=low, vmax=high, origin="lower", aspect=aspect, interpolation="nearest")
        axes.imshow(np.ma.masked_equal(overlay, 0), cmap=class_colours(len(class_names)), vmin=-0.5, vmax=len(class_names) - 0.5,
                    alpha=OVERLAY_ALPHA, origin="lower", aspect=aspect, interpolation="nearest")
        axes.set_title(f"{name} {centre[axis]}", fontsize=10)
        axes.set_xticks([])
        axes.set_yticks([])
        for x, side in ((0.02, left), (0.98, right)):
            axes.text(x, 0.5, side, transform=axes.transAxes, ha="left" if x < 0.5 else "right", va="center", color="white", fontsize=11)
    present = np.unique(np.concatenate([overlay.ravel() for overlay in overlays]))
    handles = [Patch(color=class_colour(int(value)), alpha=OVERLAY_ALPHA, label=class_names[value]) for value in present if value]
    if handles:
        figure.legend(handles=handles, loc="outside right upper", fontsize=9)
    figure.savefig(path, format="png", dpi=PREVIEW_DPI)
