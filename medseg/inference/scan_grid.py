"""Back onto the scan's grid, slab by slab: the inverse of the recipe's orientation, spacing and foreground crop.

MONAI's ``Invertd`` undoes the preprocessing on whole volumes: zero padding where the crop removed voxels, then one
bilinear resampling (border padding) of every class from the spaced grid to the scan's, then the reorientation. The
three compose into one map from a scan voxel to a network voxel, ``inverse(network affine) @ scan affine``, which
moves each axis along one other axis only (reorientation permutes and flips axes, spacing scales them, the crop
shifts them). So a scan voxel's value is a separable linear interpolation, and the scan slabs along the axis that
became the network's first need only the few network rows around them: they are made as those rows arrive.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from monai.data import MetaTensor

# MONAI skips resampling when the spacing's map is the identity this closely (monai.transforms AFFINE_TOL).
SAME_GRID_TOLERANCE = 1e-3


class ScanGridSlabs:
    """Resamples network-space slabs, arriving in order along the network's first axis, onto the scan's grid.

    Built from the preprocessed image, whose metadata records the scan's affine and shape and the crop.
    """

    def __init__(self, image: MetaTensor) -> None:
        self.scan_shape = tuple(int(size) for size in image.meta["spatial_shape"])
        self.network_shape = tuple(image.shape[1:])
        to_network = np.linalg.solve(np.asarray(image.affine, np.float64), np.asarray(image.meta["original_affine"], np.float64))
        if np.allclose(to_network, to_network.round(), atol=SAME_GRID_TOLERANCE):
            to_network = to_network.round()  # MONAI skips resampling here: network voxels are copied exactly
        linear = to_network[:3, :3]
        self.scan_axis = [int(np.abs(row).argmax()) for row in linear]  # the scan axis each network axis moves along
        if sorted(self.scan_axis) != [0, 1, 2] or not np.allclose(np.abs(linear[np.arange(3), self.scan_axis]), np.abs(linear).sum(axis=1)):
            raise RuntimeError(f"preprocessing did not keep the scan's axes (scan to network map {to_network.tolist()})")
        cropped = _cropped(image)
        self.coordinates = []  # per network axis: where along it lies each scan voxel of the matching scan axis
        for axis, scan in enumerate(self.scan_axis):
            where = torch.arange(self.scan_shape[scan], dtype=torch.float64) * float(linear[axis, scan]) + float(to_network[axis, 3])
            # border padding of the uncropped grid, as MONAI's inverse spacing; the voxels the crop removed are zero
            self.coordinates.append(where.clamp(-cropped[axis][0], self.network_shape[axis] - 1 + cropped[axis][1]))
        self.order = torch.argsort(self.coordinates[0], stable=True)  # scan slabs in the order their network rows arrive
        below = self.coordinates[0].floor()
        self.last_row = torch.where(below < self.coordinates[0], below + 1, below)[self.order]
        self.done = 0  # scan slabs made, in ``order``
        self.rows = torch.empty(0)  # the network rows held, from ``first_row``
        self.first_row = 0

    def add(self, first_row: int, slab: torch.Tensor) -> Iterator[tuple[tuple[slice, slice, slice], torch.Tensor]]:
        """Take network rows ``first_row`` onwards of (channels, rows, Y, Z) values; yield (scan index, values
        (channels, *scan slab shape)) for the scan slabs they complete (all that are left, with the last rows)."""
        self.rows = slab if self.first_row == first_row else torch.cat([self.rows, slab], dim=1)
        end = first_row + slab.shape[1]
        last = end >= self.network_shape[0]
        ready = len(self.order) if last else int((self.last_row < end).sum())
        if ready > self.done:
            scan_rows = self.order[self.done : ready]
            self.done = ready
            low, high = int(scan_rows.min()), int(scan_rows.max()) + 1
            yield tuple(slice(low, high) if scan == self.scan_axis[0] else slice(None) for scan in range(3)), self._interpolated(low, high)
        if not last:  # drop the rows no scan slab left needs
            needed = int(self.coordinates[0][self.order[self.done :]].min().floor()) if self.done < len(self.order) else end
            keep_from = min(max(needed, self.first_row), end)
            self.rows = self.rows[:, keep_from - self.first_row :]
            self.first_row = keep_from

    def _interpolated(self, low: int, high: int) -> torch.Tensor:
        """Return the values of the scan slab ``[low, high)`` along the scan axis of the network's first axis."""
        values = self.rows
        for axis in range(3):
            where = self.coordinates[axis][low:high] if axis == 0 else self.coordinates[axis]
            offset = self.first_row if axis == 0 else 0
            values = _linear(values, axis + 1, where - offset, min(self.network_shape[axis] - offset, values.shape[axis + 1]))
        # network axes back into the scan's axis order
        return values.permute(0, *[1 + self.scan_axis.index(scan) for scan in range(3)])


def _linear(values: torch.Tensor, dim: int, where: torch.Tensor, stop: int) -> torch.Tensor:
    """Return ``values`` linearly interpolated along ``dim`` at positions ``where`` (float64), zero outside [0, stop)."""
    below = where.floor()
    weight = (where - below).to(values.dtype)
    if len(where) == values.shape[dim] == stop and bool((where == torch.arange(len(where))).all()):
        return values  # the scan's own rows along this axis, the common case along all three without resampling
    # one plane of zeros appended after the values stands for every voxel outside them
    padded = torch.cat([values, torch.zeros_like(values.narrow(dim, 0, 1))], dim=dim)
    below = below.long()
    result = padded.index_select(dim, torch.where((below >= 0) & (below < stop), below, values.shape[dim]))
    if bool((weight == 0).all()):
        return result
    above = below + 1
    shape = [1] * values.dim()
    shape[dim] = len(weight)
    above_values = padded.index_select(dim, torch.where((above >= 0) & (above < stop), above, values.shape[dim]))
    return torch.lerp(result, above_values, weight.view(shape))


def _cropped(image: MetaTensor) -> list[tuple[int, int]]:
    """Return the voxels the foreground crop removed before and after, per network axis (none without a crop)."""
    for operation in image.applied_operations:
        if operation["class"] == "CropForeground":
            cropped = [int(v) for v in operation["extra_info"]["cropped"]]
            return [(cropped[2 * axis], cropped[2 * axis + 1]) for axis in range(3)]
    return [(0, 0)] * 3
