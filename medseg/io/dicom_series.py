"""Which DICOM series a folder holds: files found by their DICOM preamble, one case per SeriesInstanceUID, named readably."""

from __future__ import annotations

import hashlib
import os
import re
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from medseg.errors import MedsegError
from medseg.io.nifti import NIFTI_SUFFIXES

if TYPE_CHECKING:
    from pydicom import Dataset

INSTALL_HINT = 'pip install "medseg[dicom]"'
# Where a Part 10 file says it is DICOM: "DICM" after a 128-byte preamble (PS3.10 section 7.1).
PREAMBLE_BYTES = 128
MAGIC = b"DICM"
# Attributes that group files into series and name them; reading only these keeps a large archive's scan quick.
GROUPING_TAGS = ["SeriesInstanceUID", "SeriesDescription", "Modality"]
# The SOP class of a DICOMDIR (PS3.3 F.2), which CD and archive exports put beside their series.
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"
NAME_CHARACTERS = re.compile(r"[^A-Za-z0-9.-]+")
NAME_LENGTH = 48


def is_dicom_file(path: Path) -> bool:
    """Return whether `path` is a DICOM file by its preamble, which needs no DICOM library."""
    try:
        with path.open("rb") as handle:
            handle.seek(PREAMBLE_BYTES)
            return handle.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def require_pydicom(what: str) -> ModuleType:
    """Return pydicom, or raise the one-line error saying how to install the DICOM extra (highdicom comes with it)."""
    try:
        import highdicom  # noqa: F401  (the reader and the DICOM-SEG writer need it; checked here so the hint is one)
        import pydicom
    except ImportError:
        raise MedsegError(f"{what} needs DICOM support, which is not installed: {INSTALL_HINT}") from None
    return pydicom


def series_name(description: str, uid: str) -> str:
    """Return a file stem that is readable and the same on every run: the description, sanitised, and a hash of the UID."""
    stem = NAME_CHARACTERS.sub("_", description).strip("._-")[:NAME_LENGTH] or "series"
    return f"{stem}_{hashlib.sha1(uid.encode()).hexdigest()[:8]}"


def _dicom_files(folder: Path) -> list[Path]:
    """Return the DICOM files under `folder` and its subfolders (archives nest series), hidden files and folders excluded."""
    files = []
    for root, folders, names in os.walk(folder):
        folders[:] = sorted(name for name in folders if not name.startswith("."))
        files += [Path(root) / name for name in sorted(names) if not name.startswith(".") and not name.endswith(NIFTI_SUFFIXES)]
    return [path for path in files if is_dicom_file(path)]


def find_series(folder: Path) -> list[tuple[str, tuple[Path, ...]]]:
    """Return (name, files) for each DICOM series under `folder`, its files sorted by path.

    Only a few attributes of each file are read here; slices are ordered and checked when the series is read. A file
    pydicom cannot read becomes a series of its own, so that it fails alone with its own error.
    """
    files = _dicom_files(folder)
    if not files:
        return []
    pydicom = require_pydicom(f"{folder} holds DICOM files; reading them")
    groups: dict[str, list[Path]] = defaultdict(list)
    descriptions: dict[str, str] = {}
    for path in files:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=GROUPING_TAGS)
        except Exception:  # noqa: BLE001  (reading the series again reports the reason, naming the file)
            uid, description = f"unreadable {path}", path.name
        else:
            if ds.file_meta.get("MediaStorageSOPClassUID") == MEDIA_STORAGE_DIRECTORY:
                continue  # a DICOMDIR indexes the files beside it; it is not a series
            uid = str(ds.get("SeriesInstanceUID") or f"no SeriesInstanceUID in {path.parent}")
            description = str(ds.get("SeriesDescription") or ds.get("Modality") or "series")
        groups[uid].append(path)
        descriptions.setdefault(uid, description)
    return [(series_name(descriptions[uid], uid), tuple(paths)) for uid, paths in groups.items()]


def read_headers(files: Sequence[Path], label: str, pixels: bool = False) -> list[Dataset]:
    """Return every file's attributes (and its encoded pixel data with `pixels`), naming the file pydicom cannot read."""
    pydicom = require_pydicom(label)
    headers = []
    for path in files:
        try:
            headers.append(pydicom.dcmread(path, stop_before_pixels=not pixels))
        except Exception as err:  # noqa: BLE001  (pydicom raises several types for damaged files)
            raise MedsegError(f"{label}: cannot read {path} as DICOM: {type(err).__name__}: {err}") from None
    return headers


def series_label(name: str, files: Sequence[Path]) -> str:
    """Return how errors name a series: its case name and the folder its files are in."""
    return f"DICOM series {name} in {os.path.commonpath([str(p.parent) for p in files])}"
