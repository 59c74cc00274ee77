"""Which scans a path names: one NIfTI file, a folder of them, or a dataset (MSD or nnU-Net v2)."""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from medseg.data.formats import case_name, read_dataset
from medseg.errors import MedsegError
from medseg.inference.io import is_nifti

# nnU-Net names channel files CASE_0000.nii.gz, CASE_0001.nii.gz, ...
CHANNEL_SUFFIX = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


@dataclass(frozen=True)
class ScanFiles:
    """One scan to segment: its name (the output file's stem) and its channel files in order."""

    name: str
    images: tuple[Path, ...]


def _folder_scans(folder: Path) -> list[ScanFiles]:
    """Return one scan per file, or per nnU-Net channel group when every file carries a _NNNN suffix."""
    files = sorted(p for p in folder.iterdir() if is_nifti(p))
    matches = [CHANNEL_SUFFIX.match(case_name(p)) for p in files]
    if files and all(matches):
        groups: dict[str, list[tuple[str, Path]]] = defaultdict(list)
        for match, path in zip(matches, files):
            groups[match["case"]].append((match["channel"], path))
        return [ScanFiles(name, tuple(path for _, path in sorted(members))) for name, members in sorted(groups.items())]
    return [ScanFiles(case_name(p), (p,)) for p in files]


def is_dataset(path: Path) -> bool:
    """Return whether `path` is a dataset description or a folder holding one."""
    return (path.is_file() and path.suffix == ".json") or (path.is_dir() and (path / "dataset.json").is_file())


def find_scans(path: str | Path) -> list[ScanFiles]:
    """Return the scans `path` names: a NIfTI file, a folder of NIfTI files, or a dataset (its training cases)."""
    path = Path(path)
    if is_dataset(path):
        scans = [ScanFiles(case.name, case.images) for case in read_dataset(path).cases]
    elif path.is_dir():
        scans = _folder_scans(path)
    elif is_nifti(path):
        scans = [ScanFiles(case_name(path), (path,))]
    elif not path.exists():
        raise MedsegError(f"{path} does not exist")
    else:
        raise MedsegError(f"{path} is not a .nii/.nii.gz file, a folder of them, or a dataset.json")
    if not scans:
        raise MedsegError(f"{path} holds no .nii or .nii.gz scans")
    names = [scan.name for scan in scans]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise MedsegError(f"{path} has several scans named {repeated[0]}; their outputs would overwrite each other")
    return scans
