"""Inputs name scans as one file, a folder (nnU-Net channel groups included) or a dataset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medseg.errors import MedsegError
from medseg.data.formats import find_scans


def _touch(*paths: Path) -> None:
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")


def test_folder_of_single_files_gives_one_scan_per_file(tmp_path):
    _touch(tmp_path / "b.nii", tmp_path / "a.nii.gz", tmp_path / "notes.txt", tmp_path / ".a.tmp.nii.gz")
    assert [(s.name, [p.name for p in s.images]) for s in find_scans(tmp_path)] == [("a", ["a.nii.gz"]), ("b", ["b.nii"])]


def test_folder_in_nnunet_naming_groups_channel_files_by_case(tmp_path):
    _touch(*(tmp_path / f"case{i}_000{c}.nii.gz" for i in (1, 2) for c in (1, 0)))
    scans = find_scans(tmp_path)
    assert [s.name for s in scans] == ["case1", "case2"]
    assert [p.name for p in scans[0].images] == ["case1_0000.nii.gz", "case1_0001.nii.gz"]


@pytest.mark.parametrize("given", ["dataset.json", "."])
def test_dataset_file_or_folder_names_its_training_images(tmp_path, given):
    _touch(tmp_path / "imagesTr/s1.nii.gz", tmp_path / "labelsTr/s1.nii.gz")
    spec = {"modality": {"0": "CT"}, "labels": {"0": "background", "1": "spleen"},
            "training": [{"image": "./imagesTr/s1.nii.gz", "label": "./labelsTr/s1.nii.gz"}]}
    (tmp_path / "dataset.json").write_text(json.dumps(spec))
    [scan] = find_scans(tmp_path / given)
    assert scan.name == "s1" and scan.images == ((tmp_path / "imagesTr/s1.nii.gz").resolve(),)


def test_path_that_is_not_a_scan_is_named(tmp_path):
    _touch(tmp_path / "scan.mha")
    with pytest.raises(MedsegError, match="scan.mha is not a .nii/.nii.gz file"):
        find_scans(tmp_path / "scan.mha")


def test_folder_without_scans_is_an_error(tmp_path):
    with pytest.raises(MedsegError, match="holds no .nii or .nii.gz scans"):
        find_scans(tmp_path)


def test_two_scans_of_one_name_are_refused_naming_both_files(tmp_path):
    _touch(tmp_path / "case.nii", tmp_path / "case.nii.gz")
    with pytest.raises(MedsegError) as raised:
        find_scans(tmp_path)
    assert str(raised.value) == (
        f"{tmp_path}: {tmp_path / 'case.nii'} and {tmp_path / 'case.nii.gz'} are both case case; their outputs would overwrite each other: rename one"
    )
