"""Damaged NIfTI scans as users meet them: a header claiming more voxels than its file holds, impossible geometry, and
NaN or infinite voxels. Each writes the damaged scan to the path given and returns it."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np

HUGE_SHAPE = (100_000, 100_000, 100_000)


def huge_header(path: Path) -> Path:
    """Write a NIfTI-2 header (NIfTI-1 sizes stop at 32767) claiming ``HUGE_SHAPE`` float32 voxels, and no voxels:
    under a hundred bytes gzipped (``.nii.gz``), 544 bytes as ``.nii``."""
    header = nib.Nifti2Header()
    header.set_data_shape(HUGE_SHAPE)
    header.set_data_dtype(np.float32)
    header.set_qform(np.eye(4), code=1)
    header.set_sform(np.eye(4), code=1)
    header["vox_offset"] = header.sizeof_hdr + 4
    data = header.binaryblock + b"\0" * 4  # the 4 extension bytes, then where voxels would start
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


def with_affine(path: Path, voxels: np.ndarray, affine: np.ndarray) -> Path:
    """Write ``voxels`` with ``affine`` as the sform and no qform (a qform cannot hold a singular affine; an sform
    holds any, and readers take it first)."""
    header = nib.Nifti1Header()
    header.set_data_shape(voxels.shape)
    header.set_data_dtype(voxels.dtype)
    header.set_sform(affine, code=1)
    nib.save(nib.Nifti1Image(voxels, None, header=header), path)
    return path


def with_block(path: Path, voxels: np.ndarray, affine: np.ndarray, value: float) -> Path:
    """Write float32 ``voxels`` with a 4x4x4 block of ``value`` (NaN, +Inf, -Inf) in the middle."""
    damaged = voxels.astype(np.float32)
    centre = [size // 2 for size in damaged.shape[:3]]
    damaged[centre[0] - 2 : centre[0] + 2, centre[1] - 2 : centre[1] + 2, centre[2] - 2 : centre[2] + 2] = value
    nib.save(nib.Nifti1Image(damaged, affine), path)
    return path
