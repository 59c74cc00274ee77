import json

import nibabel as nib
import numpy as np
import pytest

from medseg.data.formats import read_dataset
from medseg.errors import MedsegError


def _save(array, path, affine=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), path)


def _nnunet_dataset(root, channels=("T1", "FLAIR"), cases=("brain_001", "brain_002")):
    for case in cases:
        for c in range(len(channels)):
            _save(np.random.rand(8, 8, 8).astype(np.float32), root / "imagesTr" / f"{case}_{c:04d}.nii.gz")
        _save(np.zeros((8, 8, 8), np.uint8), root / "labelsTr" / f"{case}.nii.gz")
    description = {
        "channel_names": {str(i): n for i, n in enumerate(channels)},
        "labels": {"background": 0, "edema": 1, "tumour": 2},
        "numTraining": len(cases),
        "file_ending": ".nii.gz",
    }
    (root / "dataset.json").write_text(json.dumps(description))
    return root


def test_reads_msd_dataset_from_folder_or_json(demo_root):
    from_folder, from_file = read_dataset(demo_root), read_dataset(demo_root / "dataset.json")
    assert from_folder == from_file
    assert len(from_folder.cases) == 6 and from_folder.channel_names == ("CT",)
    assert all(p.is_file() for case in from_folder.cases for p in (*case.images, case.label))


def test_reads_nnunet_v2_multichannel_dataset(tmp_path):
    spec = read_dataset(_nnunet_dataset(tmp_path))
    assert spec.layout == "nnunet" and spec.channel_names == ("T1", "FLAIR") and not spec.is_ct
    assert spec.class_names == ("background", "edema", "tumour")
    assert [c.name for c in spec.cases] == ["brain_001", "brain_002"]
    assert [p.name for p in spec.cases[0].images] == ["brain_001_0000.nii.gz", "brain_001_0001.nii.gz"]
    assert spec.cases[0].as_dict()["image"] == [str(p) for p in spec.cases[0].images]


def test_msd_path_escaping_dataset_root_is_refused(tmp_path):
    (tmp_path / "dataset.json").write_text(
        json.dumps({"modality": {"0": "CT"}, "labels": {"0": "background", "1": "organ"}, "training": [{"image": "../../etc/passwd", "label": "./labelsTr/a.nii.gz"}]})
    )
    with pytest.raises(MedsegError, match=r"points outside the dataset root"):
        read_dataset(tmp_path)


def test_missing_dataset_json_names_the_file(tmp_path):
    with pytest.raises(MedsegError, match=r"dataset\.json: no dataset\.json here"):
        read_dataset(tmp_path)


def test_missing_folder_is_reported(tmp_path):
    with pytest.raises(MedsegError, match="does not exist"):
        read_dataset(tmp_path / "nope")


def test_non_contiguous_labels_are_refused(tmp_path):
    (tmp_path / "dataset.json").write_text(json.dumps({"modality": {"0": "CT"}, "labels": {"0": "background", "2": "organ"}, "training": []}))
    with pytest.raises(MedsegError, match=r"label values must be 0\.\.K-1"):
        read_dataset(tmp_path)


def test_unknown_layout_is_refused(tmp_path):
    (tmp_path / "dataset.json").write_text(json.dumps({"name": "x"}))
    with pytest.raises(MedsegError, match="neither MSD"):
        read_dataset(tmp_path)
