"""Which cases a path holds: dataset descriptions (Medical Segmentation Decathlon, nnU-Net v2 raw), folders of scans, single scans."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from medseg.errors import MedsegError
from medseg.io.dicom_series import find_series
from medseg.io.nifti import case_name, is_nifti

# nnU-Net names channel files CASE_0000.nii.gz, CASE_0001.nii.gz, ...
CHANNEL_SUFFIX = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


@dataclass(frozen=True)
class Case:
    """One case: its name (an output's file stem), image files (one per channel, or one multi-channel file), label file if known.

    With ``dicom``, the image files are the slices of one DICOM series (``medseg.io.dicom_series``).
    """

    name: str
    images: tuple[Path, ...]
    label: Path | None = None
    dicom: bool = False

    def as_dict(self) -> dict:
        """MONAI dictionary-transform input; a single file stays a string so 4D files load as channels."""
        images = [str(p) for p in self.images]
        data = {"image": images[0] if len(images) == 1 else images, "name": self.name}
        return data if self.label is None else {**data, "label": str(self.label)}


@dataclass(frozen=True)
class DatasetSpec:
    """What a dataset folder holds, independent of its layout."""

    root: Path
    layout: str  # "msd" or "nnunet"
    channel_names: tuple[str, ...]
    class_names: tuple[str, ...]  # index = label value
    cases: tuple[Case, ...]

    @property
    def is_ct(self) -> bool:
        return all(name.strip().upper() == "CT" for name in self.channel_names)


def _inside(root: Path, relative: str, source: Path) -> Path:
    """Return root/relative, refusing a path that leaves the dataset root (e.g. '../../etc/passwd')."""
    path = (root / relative).resolve()
    if not path.is_relative_to(root.resolve()):
        raise MedsegError(f"{source}: path {relative!r} points outside the dataset root {root}")
    return path


def _class_names(labels: dict, source: Path, by_name: bool) -> tuple[str, ...]:
    """Return class names ordered by label value; values must be 0..K-1 (background first)."""
    try:
        pairs = {int(v): str(k) for k, v in labels.items()} if by_name else {int(k): str(v) for k, v in labels.items()}
    except (TypeError, ValueError):
        raise MedsegError(f"{source}: 'labels' must map class names to integer values (nnU-Net regions are not supported)") from None
    if sorted(pairs) != list(range(len(pairs))) or len(pairs) < 2:
        raise MedsegError(f"{source}: label values must be 0..K-1 with K >= 2, got {sorted(pairs)}")
    return tuple(pairs[i] for i in range(len(pairs)))


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise MedsegError(f"{path}: no dataset.json here (expected an MSD or nnU-Net v2 dataset folder)") from None
    except (OSError, json.JSONDecodeError) as err:
        raise MedsegError(f"{path}: cannot read dataset description: {err}") from None
    if not isinstance(data, dict):
        raise MedsegError(f"{path}: dataset description must be a JSON object")
    return data


def _channels(mapping: dict, source: Path, key: str) -> tuple[str, ...]:
    try:
        return tuple(str(mapping[str(i)]) for i in range(len(mapping)))
    except KeyError:
        raise MedsegError(f"{source}: '{key}' keys must be '0'..'{len(mapping) - 1}'") from None


def _read_msd(root: Path, data: dict, source: Path) -> DatasetSpec:
    cases = []
    for entry in data.get("training", []):
        if not isinstance(entry, dict) or "image" not in entry or "label" not in entry:
            raise MedsegError(f"{source}: every 'training' entry needs 'image' and 'label', got {entry!r}")
        image = _inside(root, entry["image"], source)
        cases.append(Case(case_name(image), (image,), _inside(root, entry["label"], source)))
    return DatasetSpec(
        root, "msd", _channels(data["modality"], source, "modality"), _class_names(data["labels"], source, by_name=False), tuple(cases)
    )


def _read_nnunet(root: Path, data: dict, source: Path) -> DatasetSpec:
    ending = str(data.get("file_ending", ".nii.gz"))
    if ".." in ending or Path(ending).name != ending:
        raise MedsegError(f"{source}: file_ending {ending!r} must be a file name's ending such as '.nii.gz', without '..' or folders")
    channels = _channels(data["channel_names"], source, "channel_names")
    labels_dir = root / "labelsTr"
    if not labels_dir.is_dir():
        raise MedsegError(f"{labels_dir}: missing labels folder of the nnU-Net dataset")
    cases = []
    for label in sorted(labels_dir.glob(f"*{ending}")):
        name = label.name.removesuffix(ending)
        # resolved like the MSD layout's paths, so a symlink out of the root is refused too
        images = tuple(_inside(root, f"imagesTr/{name}_{c:04d}{ending}", source) for c in range(len(channels)))
        cases.append(Case(name, images, _inside(root, f"labelsTr/{label.name}", source)))
    return DatasetSpec(root, "nnunet", channels, _class_names(data["labels"], source, by_name=True), tuple(cases))


def read_dataset(root: str | Path) -> DatasetSpec:
    """Return the dataset in `root` (a folder with dataset.json, or the dataset.json itself).

    MSD: ``modality`` + ``labels`` {value: name} + ``training`` [{image, label}]; a 4D image holds channels.
    nnU-Net v2: ``channel_names`` + ``labels`` {name: value} + ``file_ending``; cases are found in
    ``labelsTr/`` and ``imagesTr/<case>_<channel:04d><file_ending>``.
    """
    path = Path(root).expanduser()
    if path.name == "dataset.json":
        path = path.parent
    if not path.is_dir():
        raise MedsegError(f"{path}: dataset folder does not exist")
    source = path / "dataset.json"
    data = _read_json(source)
    try:
        if "channel_names" in data:
            spec = _read_nnunet(path, data, source)
        elif "modality" in data:
            spec = _read_msd(path, data, source)
        else:
            raise MedsegError(f"{source}: neither MSD ('modality', 'training') nor nnU-Net v2 ('channel_names', 'file_ending')")
    except KeyError as err:
        raise MedsegError(f"{source}: missing key {err}") from None
    if not spec.cases:
        raise MedsegError(f"{source}: the dataset lists no training cases")
    refuse_repeated_names(spec.cases, source)
    return spec


def refuse_repeated_names(cases: Sequence[Case], source: Path) -> None:
    """Raise a one-line error naming two files if two cases share a name: their outputs, folds and scores would mix."""
    first: dict[str, Case] = {}
    for case in cases:
        if case.name in first:
            raise MedsegError(
                f"{source}: {first[case.name].images[0]} and {case.images[0]} are both case {case.name}; their outputs "
                "would overwrite each other: rename one"
            )
        first[case.name] = case


def is_dataset(path: Path) -> bool:
    """Return whether `path` is a dataset description or a folder holding one."""
    return (path.is_file() and path.suffix == ".json") or (path.is_dir() and (path / "dataset.json").is_file())


def _folder_scans(folder: Path) -> list[Case]:
    """Return one case per file, or per nnU-Net channel group when every file carries a _NNNN suffix."""
    files = sorted(p for p in folder.iterdir() if is_nifti(p))
    matches = [CHANNEL_SUFFIX.match(case_name(p)) for p in files]
    if files and all(matches):
        groups: dict[str, list[tuple[str, Path]]] = defaultdict(list)
        for match, path in zip(matches, files):
            groups[match["case"]].append((match["channel"], path))
        return [Case(name, tuple(path for _, path in sorted(members))) for name, members in sorted(groups.items())]
    return [Case(case_name(p), (p,)) for p in files]


def find_scans(path: str | Path) -> list[Case]:
    """Return the cases `path` names: a NIfTI file, a dataset (its training cases), or a folder of NIfTI files and DICOM
    series (each series one case, found in subfolders too)."""
    path = Path(path)
    if is_dataset(path):
        scans = list(read_dataset(path).cases)
    elif path.is_dir():
        scans = _folder_scans(path) + [Case(name, files, dicom=True) for name, files in find_series(path)]
    elif is_nifti(path):
        scans = [Case(case_name(path), (path,))]
    elif not path.exists():
        raise MedsegError(f"{path} does not exist")
    else:
        raise MedsegError(f"{path} is not a .nii/.nii.gz file, a folder of them or of DICOM series, or a dataset.json")
    if not scans:
        raise MedsegError(f"{path} holds no .nii or .nii.gz scans and no DICOM series")
    refuse_repeated_names(scans, path)
    return scans
