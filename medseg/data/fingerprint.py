"""What the dataset check learns about each case while it reads the voxels anyway, and its per-file cache.

The check must read every voxel (a truncated gzip stream fails only at the end), so the same pass records
the facts a planner needs (nnU-Net's dataset fingerprint): spacing and shape in the orientation the
network sees, channels, foreground intensities per channel and voxels per class. A case is read again
only when one of its files changes size or modification time.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from medseg.atomic import write_text_atomic
from medseg.data.formats import Case
from medseg.io.nifti import in_ras_order, voxel_spacing

# foreground intensities kept per case and channel for the dataset's percentiles (nnU-Net keeps 10,000)
SAMPLES_PER_CASE = 1000
CACHE_VERSION = 1


@dataclass(frozen=True)
class ChannelIntensity:
    """Foreground intensities of one channel of one case: exact sums for mean and std, a sample for percentiles."""

    count: int
    total: float
    total_of_squares: float
    samples: tuple[float, ...]


@dataclass(frozen=True)
class CaseFingerprint:
    """The facts of one case the planner needs, in the network's (RAS) axis order.

    Attributes:
        name: the case's name.
        spacing: voxel size in mm per axis (x, y, z).
        shape: voxels per axis (x, y, z).
        channels: foreground intensities per image channel (foreground: label > 0).
        class_voxels: voxels per label value 0..K-1.
    """

    name: str
    spacing: tuple[float, float, float]
    shape: tuple[int, int, int]
    channels: tuple[ChannelIntensity, ...]
    class_voxels: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CaseFingerprint:
        channels = tuple(ChannelIntensity(c["count"], c["total"], c["total_of_squares"], tuple(c["samples"])) for c in data["channels"])
        return cls(data["name"], tuple(data["spacing"]), tuple(data["shape"]), channels, tuple(data["class_voxels"]))


def ras_geometry(shape: Sequence[int], affine: np.ndarray) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """Return a grid's (shape, spacing in mm) in RAS order, as the fingerprint and preprocessing see it."""
    return in_ras_order([int(size) for size in shape[:3]], affine), in_ras_order([float(length) for length in voxel_spacing(affine)], affine)


def _intensity(voxels: np.ndarray, rng: np.random.Generator) -> ChannelIntensity:
    values = voxels.astype(np.float64, copy=False)
    chosen = rng.choice(values, size=min(SAMPLES_PER_CASE, values.size), replace=False) if values.size else values
    return ChannelIntensity(int(values.size), float(values.sum()), float(np.square(values).sum()), tuple(np.round(chosen, 4).tolist()))


def case_fingerprint(
    case: Case, affine: np.ndarray, images: Sequence[np.ndarray], label: np.ndarray, class_voxels: Sequence[int]
) -> CaseFingerprint:
    """Return the fingerprint of a case from voxels already read and checked (images 3D, or 4D channels last)."""
    shape, spacing = ras_geometry(label.shape, affine)
    foreground = label.reshape(label.shape[:3]) > 0
    rng = np.random.default_rng(0)
    channels = []
    for voxels in images:
        stack = voxels[..., np.newaxis] if voxels.ndim == 3 else voxels
        channels += [_intensity(stack[..., c][foreground], rng) for c in range(stack.shape[3])]
    return CaseFingerprint(case.name, spacing, shape, tuple(channels), tuple(int(v) for v in class_voxels))


def dataset_cache_name(root: str | Path) -> str:
    """Return the name a dataset's entries in the cache go by: its folder's name and a hash of its absolute path (a root
    may be given as its dataset.json)."""
    folder = Path(root).resolve()
    folder = folder.parent if folder.is_file() else folder
    return f"{folder.name}-{hashlib.sha256(str(folder).encode()).hexdigest()[:12]}"


def fingerprint_cache_path(cache_dir: str | Path, root: str | Path) -> Path:
    """Return where the fingerprints of the dataset in ``root`` are cached under ``cache_dir`` (one file per dataset folder)."""
    return Path(cache_dir) / "fingerprints" / f"{dataset_cache_name(root)}.json"


def file_stamp(path: Path) -> list[Any]:
    """Return what identifies a file's version: its path, size and modification time."""
    stat = path.stat()
    return [str(path), stat.st_size, stat.st_mtime_ns]


def case_key(case: Case, num_channels: int, num_classes: int) -> str | None:
    """Return the cache key of a case: its files' paths, sizes and modification times (None if a file is missing)."""
    files = [*case.images, *([case.label] if case.label else [])]
    try:
        stamps = [file_stamp(Path(path)) for path in files]
    except OSError:
        return None
    text = json.dumps([stamps, num_channels, num_classes])
    return hashlib.sha256(text.encode()).hexdigest()[:24]


class FingerprintCache:
    """Checked cases' fingerprints in one JSON file, keyed by ``case_key``; only clean cases are stored."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            data = json.loads(self.path.read_text())
            self.entries = data["cases"] if data.get("version") == CACHE_VERSION else {}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            self.entries = {}  # no cache yet, or an unreadable one: check everything again

    def get(self, key: str | None) -> CaseFingerprint | None:
        entry = self.entries.get(key) if key else None
        return CaseFingerprint.from_dict(entry) if entry else None

    def save(self, fingerprints: dict[str, CaseFingerprint]) -> None:
        """Replace the file with exactly these cases (cases that left the dataset or changed are dropped)."""
        self.entries = {key: fingerprint.to_dict() for key, fingerprint in fingerprints.items()}
        write_text_atomic(self.path, json.dumps({"version": CACHE_VERSION, "cases": self.entries}))


@dataclass(frozen=True)
class DatasetFingerprint:
    """Every case's fingerprint with the dataset's names; what the planner decides from."""

    root: str
    channel_names: tuple[str, ...]
    class_names: tuple[str, ...]
    cases: tuple[CaseFingerprint, ...]

    @property
    def is_ct(self) -> bool:
        return all(name.strip().upper() == "CT" for name in self.channel_names)

    def spacings(self) -> np.ndarray:
        """Return the cases' spacings, (cases, 3) in mm."""
        return np.array([case.spacing for case in self.cases], dtype=float)

    def shapes(self) -> np.ndarray:
        """Return the cases' shapes, (cases, 3) in voxels."""
        return np.array([case.shape for case in self.cases], dtype=float)

    def class_voxels(self) -> np.ndarray:
        """Return the voxels per class summed over cases."""
        return np.sum([case.class_voxels for case in self.cases], axis=0)

    def foreground_intensity(self, channel: int) -> dict[str, float]:
        """Return mean, std and the 0.5 / 99.5 percentiles of one channel's foreground intensities over all cases."""
        parts = [case.channels[channel] for case in self.cases]
        count = sum(p.count for p in parts)
        mean = sum(p.total for p in parts) / max(count, 1)
        variance = max(sum(p.total_of_squares for p in parts) / max(count, 1) - mean**2, 0.0)
        samples = np.concatenate([np.asarray(p.samples, dtype=float) for p in parts])
        low, high = np.percentile(samples, [0.5, 99.5]) if samples.size else (0.0, 0.0)
        return {"mean": mean, "std": variance**0.5, "percentile_00_5": float(low), "percentile_99_5": float(high)}

    def to_dict(self) -> dict[str, Any]:
        return {
            "root": self.root, "channel_names": list(self.channel_names), "class_names": list(self.class_names),
            "cases": [case.to_dict() for case in self.cases],
        }
