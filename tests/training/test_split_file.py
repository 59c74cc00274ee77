"""The split as training uses it: written once into the cache for the dataset, fold count and seed, and read back by
later runs (so a case added to the dataset moves no case between folds), a dataset root's nnU-Net splits_final.json
used as it is (and the root left alone), and every run's own split recorded in its run folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from medseg.data.demo import cache_folder
from medseg.data.split import RUN_SPLIT_FILE, SPLIT_FILE
from medseg.training.cli import build_cli
from tests.helpers.cli import tiny_train_args


def _names(cases) -> list[str]:
    return [case.name for case in cases]


def _add_case(root, name: str) -> None:
    """Add a copy of the root's first case under ``name`` to an MSD dataset."""
    spec = json.loads((root / "dataset.json").read_text())
    for folder in ("imagesTr", "labelsTr"):
        shutil.copy(root / folder / "phantom_000.nii.gz", root / folder / f"{name}.nii.gz")
    spec["training"].append({"image": f"./imagesTr/{name}.nii.gz", "label": f"./labelsTr/{name}.nii.gz"})
    spec["numTraining"] += 1
    (root / "dataset.json").write_text(json.dumps(spec))


def test_a_run_records_its_split_and_the_split_file_it_came_from(_trained_runs):
    run = _trained_runs(False).log_dir
    recorded = json.loads((run / RUN_SPLIT_FILE).read_text())
    split_file = Path(recorded["split_file"])
    assert split_file.is_relative_to(cache_folder()) and recorded["fold"] == 0
    assert [set(recorded["train"]), set(recorded["val"])] == [set(json.loads(split_file.read_text())[0][key]) for key in ("train", "val")]
    assert sorted(path.name for path in run.parent.iterdir()) == [run.name]  # the logger's folder holds runs only


def test_a_later_run_reads_the_split_back_and_a_case_added_since_changes_no_fold(demo_root, tmp_path):
    root = shutil.copytree(demo_root, tmp_path / "data")
    args = tiny_train_args(root, tmp_path / "runs")
    before = [_names(build_cli([*args, f"--data.fold={fold}"]).datamodule.val_cases) for fold in range(3)]
    _add_case(root, "phantom_new")
    after = [build_cli([*args, f"--data.fold={fold}"]).datamodule for fold in range(3)]
    assert [_names(data.val_cases) for data in after] == before
    assert all("phantom_new" not in _names(data.train_cases) for data in after)


def test_an_nnunet_split_file_in_the_dataset_root_is_used_and_the_root_is_left_alone(demo_root, tmp_path):
    root = shutil.copytree(demo_root, tmp_path / "data")
    names = sorted(p.name.removesuffix(".nii.gz") for p in (root / "imagesTr").glob("*.nii.gz"))
    folds = [{"train": [n for n in names if n not in names[k::3]], "val": names[k::3]} for k in range(3)]
    (root / SPLIT_FILE).write_text(json.dumps(folds))
    files = sorted(root.rglob("*"))
    data = build_cli([*tiny_train_args(root, tmp_path / "runs"), "--data.fold=1"]).datamodule
    assert _names(data.val_cases) == folds[1]["val"] and _names(data.train_cases) == folds[1]["train"]
    assert data.split_file == root / SPLIT_FILE and sorted(root.rglob("*")) == files
    assert not (tmp_path / "runs" / "medseg" / SPLIT_FILE).exists()
