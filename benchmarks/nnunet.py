"""nnU-Net v2 for the benchmarks that compare with it (``planning``, ``nnunet_comparison``): a medseg dataset in
nnU-Net's raw layout, its commands run from its own environment (``--nnunet-python``), its version.

nnU-Net is a benchmark tool here, never a medseg dependency: it lives in a virtual environment of its own, made once
with ``python3 -m venv /tmp/nnunet-venv && /tmp/nnunet-venv/bin/pip install torch==2.13.0 && /tmp/nnunet-venv/bin/pip
install nnunetv2`` (torch first, the CPU build, so that nnunetv2 does not pull a CUDA build). Not a benchmark itself:
it has no ``main``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import nibabel as nib

from medseg.data.formats import DatasetSpec

__all__ = ["nnunet_environment", "nnunet_version", "run_nnunet", "to_nnunet_images", "to_nnunet_raw"]

FOLDERS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")


def _write_channels(images: Sequence[Path], channels: int, folder: Path, case_id: str) -> None:
    """Write one case's images as nnU-Net's ``CASE_XXXX.nii.gz``, one file per channel (a 4D file is split)."""
    if len(images) == 1 and channels > 1:  # one 4D file, channels last
        image = nib.load(images[0])
        for channel in range(channels):
            volume = nib.Nifti1Image(image.dataobj[..., channel], image.affine, image.header)
            nib.save(volume, folder / f"{case_id}_{channel:04d}.nii.gz")
    else:
        for channel, path in enumerate(images):
            shutil.copyfile(path, folder / f"{case_id}_{channel:04d}.nii.gz")


def to_nnunet_raw(spec: DatasetSpec, raw: Path, dataset_id: int, name: str) -> Path:
    """Write ``spec`` in nnU-Net v2's raw layout (``imagesTr/CASE_XXXX.nii.gz`` per channel, ``labelsTr``); return its folder."""
    folder = raw / f"Dataset{dataset_id:03d}_{name}"
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    for index, case in enumerate(spec.cases):
        case_id = f"{name}_{index:03d}"
        _write_channels(case.images, len(spec.channel_names), folder / "imagesTr", case_id)
        shutil.copyfile(case.label, folder / "labelsTr" / f"{case_id}.nii.gz")
    description = {
        "channel_names": {str(i): n for i, n in enumerate(spec.channel_names)},
        "labels": {n: i for i, n in enumerate(spec.class_names)},
        "numTraining": len(spec.cases), "file_ending": ".nii.gz",
    }
    (folder / "dataset.json").write_text(json.dumps(description, indent=1))
    return folder


def to_nnunet_images(spec: DatasetSpec, folder: Path) -> Path:
    """Write the images of ``spec``'s cases as ``nnUNetv2_predict`` reads them, named after each case (its output,
    ``CASE.nii.gz``, then pairs with the case's label by name); return ``folder``."""
    folder.mkdir(parents=True)
    for case in spec.cases:
        _write_channels(case.images, len(spec.channel_names), folder, case.name)
    return folder


def nnunet_environment(work: Path, **variables: str) -> dict[str, str]:
    """Return this process's environment with nnU-Net's three folders under ``work`` and ``variables`` added."""
    return {**os.environ, **{k: str(work / k) for k in FOLDERS}, **variables}


def run_nnunet(python: Path, command: Sequence[str], env: Mapping[str, str], log: Path) -> float:
    """Run the nnU-Net command ``command`` (``nnUNetv2_...`` and its arguments) with the scripts beside ``python``,
    its output appended to ``log``; return the wall seconds from process start."""
    words = [str(python.parent / command[0]), *command[1:]]
    start = time.perf_counter()
    with log.open("a") as out:
        subprocess.run(words, env=dict(env), stdout=out, stderr=subprocess.STDOUT, check=True)
    return time.perf_counter() - start


def nnunet_version(python: Path) -> str:
    """Return the version of nnunetv2 installed beside ``python``."""
    command = [str(python), "-c", "import importlib.metadata as m; print(m.version('nnunetv2'))"]
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip()
