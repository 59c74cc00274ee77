import os

import pytest
import torch

from medseg.data.formats import read_dataset
from medseg.data.transforms import Preprocessing, preprocessing_transforms
from medseg.data.volume_cache import available_memory_bytes, case_voxels, choose_storage, dataset_bytes
from medseg.errors import MedsegError

GiB = 2**30


def test_auto_holds_a_dataset_in_memory_when_it_takes_at_most_half_of_the_memory_available():
    storage = choose_storage("auto", needed_bytes=5 * GiB, available_bytes=10 * GiB)
    assert storage.on_disk and storage.in_memory
    assert "up to 5.00 GiB (1 rank), 10.0 GiB of memory available: held in memory" in storage.summary


def test_auto_reads_a_larger_dataset_from_disk():
    storage = choose_storage("auto", needed_bytes=5 * GiB + 1, available_bytes=10 * GiB)
    assert storage.on_disk and not storage.in_memory
    assert "read from disk when a patch is drawn" in storage.summary


def test_every_rank_on_the_machine_counts_with_its_own_copy():
    assert not choose_storage("auto", needed_bytes=2 * GiB, available_bytes=10 * GiB, ranks=4).in_memory


def test_memory_asked_for_a_dataset_larger_than_the_memory_available_is_a_one_line_error():
    with pytest.raises(MedsegError) as error:
        choose_storage("memory", needed_bytes=12 * GiB, available_bytes=10 * GiB)
    assert str(error.value) == (
        "data.cache memory: the preprocessed dataset takes up to 12.00 GiB (1 rank), 10.0 GiB of memory available; "
        "it does not fit: use --data.cache auto or disk"
    )
    assert not choose_storage("memory", needed_bytes=8 * GiB, available_bytes=10 * GiB).on_disk  # fits: as asked


def test_disk_and_none_need_no_sizes():
    assert (choose_storage("disk", None, None).on_disk, choose_storage("none", None, None).on_disk) == (True, False)


def test_resampled_voxels_follow_the_target_spacing():
    assert case_voxels((100, 100, 40), (1.0, 1.0, 3.0), (2.0, 2.0, 3.0)) == 50 * 50 * 40
    assert case_voxels((100, 100, 40), (1.0, 1.0, 3.0), None) == 100 * 100 * 40


def test_size_estimate_bounds_what_the_preprocessed_volumes_take(demo_root):
    spec = read_dataset(demo_root)
    prep = Preprocessing(spacing=(1.5, 1.5, 3.0))
    transform = preprocessing_transforms(prep)
    held = sum(sum(v.numel() * v.element_size() for v in transform(case.as_dict()).values() if isinstance(v, torch.Tensor)) for case in spec.cases)
    estimate = dataset_bytes([], spec.cases, channels=1, target_spacing=prep.spacing, patch_size=(32, 32, 16))  # from the headers
    assert held <= estimate < 2 * held  # cropping to the body is not counted


def test_available_memory_is_positive_and_at_most_the_machine_s():
    assert 0 < available_memory_bytes() <= os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
