"""Where preprocessed volumes are kept: in memory when the dataset fits with room to spare, else on disk.

MONAI's CacheDataset keeps every preprocessed volume in memory and preprocesses them again at every start;
nnU-Net preprocesses once to disk and reads from there. ``cache: auto`` does both: it preprocesses each case once
into the disk cache (keyed by the case's files and the preprocessing), then holds the volumes in memory when they
take at most ``AUTO_MEMORY_SHARE`` of the memory available, and otherwise reads each training case from disk when
a patch is drawn from it, so memory stays bounded as the dataset grows.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
import threading
from contextlib import contextmanager
from multiprocessing.dummy import DummyProcess
from multiprocessing.pool import ThreadPool
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from monai.data import PersistentDataset
from monai.data.utils import pickle_hashing
from monai.transforms import Compose, RandomizableTrait, Transform
from tqdm import tqdm

from medseg.io import nifti
from medseg.data.fingerprint import DatasetFingerprint, file_stamp, ras_geometry
from medseg.data.formats import Case
from medseg.data.transforms import CROP_CENTRE_SHARE, CROP_CENTRES
from medseg.errors import MedsegError

CACHE_MODES = ("auto", "memory", "disk", "none")
# auto leaves the other half to the model, batches, loader workers and the OS's file cache
AUTO_MEMORY_SHARE = 0.5
FLOAT_BYTES = 4  # preprocessed images and labels are float32
INDEX_BYTES = 8  # crop centres are int64 voxel indices


@dataclass(frozen=True)
class VolumeStorage:
    """Where the data module keeps preprocessed volumes, and why (the one-line ``summary`` it logs).

    Attributes:
        on_disk: preprocess each case once into the disk cache and read it from there.
        in_memory: hold every preprocessed volume in memory for the whole run.
        summary: the choice with its numbers, for the log.
    """

    on_disk: bool
    in_memory: bool
    summary: str


def case_voxels(shape: Sequence[int], spacing: Sequence[float], target_spacing: Sequence[float] | None) -> int:
    """Return the voxels of a case after resampling from ``spacing`` to ``target_spacing`` (None: not resampled)."""
    if target_spacing is None:
        return int(np.prod(shape))
    return int(np.prod([max(1, math.floor(n * s / t + 0.5)) for n, s, t in zip(shape, spacing, target_spacing)]))


def preprocessed_case_bytes(voxels: int, channels: int, patch_size: Sequence[int] | None = None) -> int:
    """Return the bytes one preprocessed case takes: float32 image channels and label, plus, for a training case
    (``patch_size`` given), its crop centres (``CropCentresd``). Cropping to the body is not counted: an upper bound."""
    volume = voxels * FLOAT_BYTES * (channels + 1)
    if patch_size is None:
        return volume
    voxels = max(voxels, int(np.prod(patch_size)))  # padded to the patch
    return voxels * FLOAT_BYTES * (channels + 1) + 2 * INDEX_BYTES * max(CROP_CENTRES, math.ceil(CROP_CENTRE_SHARE * voxels))


def case_geometry(case: Case, known: dict[str, tuple[tuple[int, ...], tuple[float, ...]]]) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """Return a case's (shape, spacing) in RAS order: from ``known`` (the dataset check's), else from its label's header."""
    if case.name in known:
        return known[case.name]
    header = nifti.load_header(case.label or case.images[0])
    return ras_geometry(header.shape, header.affine)


def dataset_bytes(
    train_cases: Sequence[Case], val_cases: Sequence[Case], channels: int, target_spacing: Sequence[float] | None,
    patch_size: Sequence[int], fingerprint: DatasetFingerprint | None = None,
) -> int:
    """Return the bytes the preprocessed training and validation cases take in memory (an upper bound); shapes and
    spacings come from the dataset check's ``fingerprint``, else from the files' headers."""
    known = {case.name: (case.shape, case.spacing) for case in fingerprint.cases} if fingerprint else {}

    def total(cases: Sequence[Case], patch: Sequence[int] | None) -> int:
        sizes = [case_voxels(*case_geometry(case, known), target_spacing) for case in cases]
        return sum(preprocessed_case_bytes(voxels, channels, patch) for voxels in sizes)

    return total(train_cases, patch_size) + total(val_cases, None)


def available_memory_bytes() -> int:
    """Return the memory this process can still take: the system's MemAvailable, within its cgroup's limit (containers,
    Slurm jobs), where the kernel's out-of-memory killer would stop it."""
    readings = [_meminfo_available()]
    for limit, usage in [("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                         ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes")]:
        try:
            readings.append(int(Path(limit).read_text()) - int(Path(usage).read_text()))
        except (OSError, ValueError):  # no such cgroup, or no limit ("max")
            continue  # (a cgroup's usage counts its file cache too, so this errs low)
    known = [value for value in readings if value is not None]
    return max(0, min(known)) if known else os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def choose_storage(requested: str, needed_bytes: int | None, available_bytes: int | None, ranks: int = 1) -> VolumeStorage:
    """Return where to keep the preprocessed volumes for ``cache: requested``, or raise MedsegError when ``memory`` is
    asked for a dataset larger than the memory available (it would be killed for running out of memory).

    Args:
        requested: "auto", "memory", "disk" or "none".
        needed_bytes, available_bytes: the preprocessed dataset's size (``dataset_bytes``) and the memory available
            (``available_memory_bytes``); needed only for "auto" and "memory".
        ranks: training processes on this machine, each holding its own copy in memory.
    """
    if requested == "none":
        return VolumeStorage(False, False, "data.cache none: every case is preprocessed again whenever a patch is drawn from it")
    if requested == "disk":
        return VolumeStorage(True, False, "data.cache disk: preprocessed once to disk, each case read from there when a patch is drawn")
    held = needed_bytes * ranks
    numbers = f"the preprocessed dataset takes up to {held / 2**30:.2f} GiB ({ranks} rank{'s' if ranks > 1 else ''}), {available_bytes / 2**30:.1f} GiB of memory available"
    if requested == "memory":
        if held > available_bytes:
            raise MedsegError(f"data.cache memory: {numbers}; it does not fit: use --data.cache auto or disk")
        return VolumeStorage(False, True, f"data.cache memory: {numbers}: preprocessed at every start and held in memory")
    if held <= AUTO_MEMORY_SHARE * available_bytes:
        return VolumeStorage(True, True, f"data.cache auto: {numbers}: held in memory (fits in {AUTO_MEMORY_SHARE:.0%}), preprocessed once to disk")
    return VolumeStorage(True, False, f"data.cache auto: {numbers}: more than {AUTO_MEMORY_SHARE:.0%}, so each case is read from disk when a patch is drawn (preprocessed once)")


def case_hash(item: dict[str, Any]) -> bytes:
    """Return the disk cache key of a case: its paths and name with every file's size and modification time, so that
    a case whose files change is preprocessed again (the preprocessing's own hash is added by ``PersistentDataset``)."""
    images = item["image"] if isinstance(item["image"], list) else [item["image"]]
    files = [*images, *([item["label"]] if "label" in item else [])]
    return pickle_hashing([item, [file_stamp(Path(path)) for path in files]])


def disk_cache(items: list[dict[str, Any]], preprocessing: Compose, folder: Path) -> PersistentDataset:
    """Return the preprocessed cases of ``items`` read from (and, the first time, written to) ``folder``."""
    return PersistentDataset(items, preprocessing, cache_dir=folder, hash_func=case_hash, hash_transform=pickle_hashing)


def preprocess_missing(dataset: PersistentDataset, threads: int | None = None) -> int:
    """Preprocess into the disk cache every case it lacks, in ``threads`` threads, and return how many; cases already
    there are not read (``PersistentDataset`` itself would preprocess a case only when a patch is first drawn from it)."""
    missing = [i for i, item in enumerate(dataset.data) if not cache_file(dataset, item).is_file()]
    if missing:
        with ThreadPool(threads) as pool:
            for _ in tqdm(pool.imap_unordered(dataset.__getitem__, missing), total=len(missing), desc="Preprocessing to disk", leave=False):
                pass
    return len(missing)


@contextmanager
def pool_threads_finished_on_error(timeout_s: float = 60.0):
    """Let thread-pool workers finish the case in hand when preprocessing fails, before the error ends the process.

    A ``ThreadPool`` left by an exception is terminated without joining its threads (``multiprocessing.pool``), and a
    daemon thread still inside torch when the interpreter finalizes aborts the process ("terminate called without an
    active exception", exit code 134) after the one-line error that should have ended it with code 1.
    """
    try:
        yield
    except BaseException:
        for thread in threading.enumerate():
            if isinstance(thread, DummyProcess) and thread.is_alive():
                thread.join(timeout_s)
        raise


def cache_file(dataset: PersistentDataset, item: dict[str, Any]) -> Path:
    """Return the file ``PersistentDataset`` keeps the preprocessed ``item`` in (its naming: item hash + transform hash)."""
    return Path(dataset.cache_dir) / f"{dataset.hash_func(item).decode('utf-8')}{dataset.transform_hash}.pt"


def split_at_first_random(transform: Compose) -> tuple[Compose, Compose]:
    """Return (the deterministic head, the rest) of ``transform``, split where MONAI's cached datasets split it: at the
    first random transform (or the first that is no MONAI ``Transform``)."""
    steps = transform.flatten().transforms
    first = next((i for i, t in enumerate(steps) if isinstance(t, RandomizableTrait) or not isinstance(t, Transform)), len(steps))
    return Compose(steps[:first]), Compose(steps[first:])
