import json

import nibabel as nib
import numpy as np
import pytest

from medseg.data.formats import read_dataset
from medseg.data.validation import validate_dataset
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


def test_cases_sharing_a_name_are_refused_naming_both_files(tmp_path):
    for site in ("site_a", "site_b"):
        _save(np.zeros((8, 8, 8), np.int16), tmp_path / site / "images" / "case.nii.gz")
        _save(np.zeros((8, 8, 8), np.uint8), tmp_path / site / "labels" / "case.nii.gz")
    training = [{"image": f"./{site}/images/case.nii.gz", "label": f"./{site}/labels/case.nii.gz"} for site in ("site_a", "site_b")]
    (tmp_path / "dataset.json").write_text(json.dumps({"modality": {"0": "CT"}, "labels": {"0": "background", "1": "organ"}, "training": training}))
    with pytest.raises(MedsegError) as raised:
        read_dataset(tmp_path)
    text = str(raised.value)
    assert "\n" not in text and "are both case case" in text
    assert str(tmp_path / "site_a/images/case.nii.gz") in text and str(tmp_path / "site_b/images/case.nii.gz") in text


@pytest.mark.parametrize("folder", ["imagesTr", "labelsTr"])
def test_nnunet_symlink_leaving_the_dataset_root_is_refused(tmp_path, folder):
    root = _nnunet_dataset(tmp_path / "dataset", channels=("CT",), cases=("case_001",))
    outside = tmp_path / "elsewhere.nii.gz"
    _save(np.zeros((8, 8, 8), np.uint8), outside)
    link = root / folder / ("case_001_0000.nii.gz" if folder == "imagesTr" else "case_001.nii.gz")
    link.unlink()
    link.symlink_to(outside)
    with pytest.raises(MedsegError, match=r"points outside the dataset root"):
        read_dataset(root)


def test_nnunet_symlink_inside_the_dataset_root_is_read(tmp_path):
    root = _nnunet_dataset(tmp_path, channels=("CT",), cases=("case_001",))
    image = root / "imagesTr" / "case_001_0000.nii.gz"
    image.rename(root / "case_001_0000.nii.gz")
    image.symlink_to(root / "case_001_0000.nii.gz")
    assert read_dataset(root).cases[0].images[0].samefile(root / "case_001_0000.nii.gz")


@pytest.mark.parametrize("ending", ["/../../secret.nii.gz", "../x.nii.gz", "sub/.nii.gz"])
def test_nnunet_file_ending_that_is_not_a_file_ending_is_refused(tmp_path, ending):
    root = _nnunet_dataset(tmp_path)
    description = json.loads((root / "dataset.json").read_text())
    (root / "dataset.json").write_text(json.dumps({**description, "file_ending": ending}))
    with pytest.raises(MedsegError, match=r"file_ending .* must be a file name's ending"):
        read_dataset(root)


def test_nnunet_label_without_its_image_is_one_line_naming_the_image(tmp_path):
    root = _nnunet_dataset(tmp_path, channels=("CT",), cases=("case_001", "case_002"))
    (root / "imagesTr" / "case_002_0000.nii.gz").unlink()
    with pytest.raises(MedsegError) as raised:
        validate_dataset(read_dataset(root), show_progress=False, workers=1)
    assert str(raised.value) == f"{root / 'imagesTr' / 'case_002_0000.nii.gz'}: file not found"
