"""Label maps compared folder against folder: the share of voxels two segmentations of the same scans agree on."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np


def voxel_agreement(made: Path, reference: Path) -> float:
    """Return the share of voxels on which the ``<case>.nii.gz`` label maps in ``made`` equal those in ``reference``
    (the same cases, shapes and affines, else an assertion fails)."""
    files = sorted(reference.glob("*.nii.gz"))
    assert files and sorted(p.name for p in made.glob("*.nii.gz")) == [p.name for p in files]
    equal = total = 0
    for file in files:
        ours, theirs = nib.load(made / file.name), nib.load(file)
        assert ours.shape == theirs.shape and np.allclose(ours.affine, theirs.affine, atol=1e-4)
        equal += int((np.asarray(ours.dataobj) == np.asarray(theirs.dataobj)).sum())
        total += int(np.prod(theirs.shape))
    return equal / total
