"""Ensembles of checkpoints (nnU-Net's fold ensemble): window logits averaged over the models before softmax, one
recipe for all, and which models ran recorded in recipe.json."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medseg.errors import MedsegError
from medseg.inference import InferenceOptions, Predictor, load_trained_model
from medseg.inference import predictor as predictor_module
from medseg.inference.checkpoint import load_ensemble
from medseg.inference.command import main
from medseg.inference.postprocessing import POSTPROCESSING_FILE, Postprocessing
from medseg.inference.predictor import ensemble_stays_on_device, weight_bytes
from medseg.model.networks import build_network
from tests.helpers.stand_ins import MiB

from .conftest import SPACING_MM, TINY_UNET, medseg_meta, phantom_hu, phantom_labels, save_checkpoint, save_scan

FP32_CPU = InferenceOptions(precision="32-true", device="cpu", window={"batch_size": 2})


def _member(folder: Path, seed: int, **recipe) -> Path:
    """Write an untrained tiny UNet as fold ``seed``'s best checkpoint, in a training run's layout."""
    torch.manual_seed(seed)
    checkpoints = folder / f"fold_{seed}" / "version_0" / "checkpoints"
    checkpoints.mkdir(parents=True)
    return save_checkpoint(checkpoints / "best-epoch001-dice0.5000.ckpt", build_network("UNet", 1, 3, **TINY_UNET), medseg_meta(**recipe))


@pytest.fixture()
def members(tmp_path: Path) -> list[Path]:
    return [_member(tmp_path / "cv", seed) for seed in range(3)]


def _image() -> torch.Tensor:
    return torch.rand(1, 1, 30, 26, 20, generator=torch.Generator().manual_seed(0))


def test_the_ensemble_averages_the_models_logits_before_softmax(members):
    models = [load_trained_model(path) for path in members]
    ensemble, _ = Predictor(models, FP32_CPU).probabilities(_image())
    singles = torch.stack([Predictor(model, FP32_CPU).probabilities(_image())[0] for model in models])
    # log p = logits - logsumexp(logits): with the logits averaged, log p of the ensemble and the mean of the
    # members' log p differ by one constant per voxel; averaging the probabilities would not give that
    offset = ensemble.log() - singles.log().mean(dim=0)
    torch.testing.assert_close(offset, offset[:1].expand_as(offset), rtol=0, atol=1e-5)
    assert not torch.allclose(ensemble, singles.mean(dim=0), atol=1e-4)  # so the test tells the two apart
    assert ensemble.sum(dim=0).sub(1).abs().max() < 1e-5


def test_a_folder_contributes_every_runs_best_checkpoint(members, tmp_path):
    assert [model.source for model in load_ensemble([tmp_path / "cv"])] == members


def test_a_run_that_never_validated_during_training_contributes_its_last_checkpoint(members, tmp_path, caplog):
    # a fold shorter than its validation interval: its final validation scored last.ckpt, and the ensemble takes it
    short = members[1].parent
    members[1].rename(short / "last.ckpt")
    assert [model.source for model in load_ensemble([tmp_path / "cv"])] == [members[0], short / "last.ckpt", members[2]]
    assert f"{short}: no best checkpoint (no validation ran during training): its last.ckpt is used" in caplog.text


def test_a_folder_without_checkpoints_is_a_one_line_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(MedsegError, match=r"empty holds no checkpoint of a training run \(best-\*\.ckpt or last\.ckpt\)"):
        load_ensemble([tmp_path / "empty"])


@pytest.mark.parametrize("field", ["class_names", "patch_size", "preprocessing", "channel_names"])
def test_models_of_different_recipes_are_refused_naming_the_field(members, tmp_path, field):
    meta = medseg_meta()
    changed = {
        "class_names": {**meta, "class_names": ["background", "liver", "tumour"]},
        "patch_size": {**meta, "patch_size": [24, 24, 24]},
        "preprocessing": {**meta, "preprocessing": {**meta["preprocessing"], "normalization": "ct_zscore"}},
        "channel_names": {**meta, "channel_names": ["T1"]},
    }[field]
    torch.manual_seed(5)
    other = save_checkpoint(tmp_path / "other.ckpt", build_network("UNet", 1, 3, **TINY_UNET), changed)
    with pytest.raises(MedsegError, match=rf"^checkpoints .* and {other} differ in {field} \(.*\): an ensemble's models must share it$"):
        load_ensemble([members[0], other])


def test_infer_with_a_folder_ensembles_its_models_and_records_them(members, scans, tmp_path):
    assert _infer(tmp_path / "cv", scans, tmp_path / "out") == 0
    record = json.loads((tmp_path / "out" / "recipe.json").read_text())
    assert record["models"] == [str(path) for path in members] and record["postprocessing"] is None
    assert _infer(members[0], scans, tmp_path / "single") == 0
    assert json.loads((tmp_path / "single" / "recipe.json").read_text())["models"] == [str(members[0])]


def _infer(checkpoint: Path, scans: Path, output: Path, *extra: str) -> int:
    return main(["--checkpoint", str(checkpoint), "--input", str(scans), "--output", str(output), "--device", "cpu", *extra])


@pytest.fixture()
def scans(tmp_path: Path) -> Path:
    folder = tmp_path / "scans"
    folder.mkdir()
    save_scan(folder / "a.nii.gz", phantom_hu(phantom_labels((24, 22, 20))), np.diag([SPACING_MM] * 3 + [1.0]))
    return folder


def test_postprocessing_beside_the_models_is_applied_unless_turned_off_and_recorded(trained_checkpoint, tmp_path):
    run = tmp_path / "cv" / "fold_0" / "version_0" / "checkpoints"
    run.mkdir(parents=True)
    shutil.copy(trained_checkpoint, run / "best-epoch001-dice0.9000.ckpt")
    labels = phantom_labels()
    labels[30:33, 4:7, 4:7] = 1  # a speck of class 1's intensity apart from its box, which the model labels 1
    (tmp_path / "scans").mkdir()
    save_scan(tmp_path / "scans" / "a.nii.gz", phantom_hu(labels), np.diag([SPACING_MM] * 3 + [1.0]))
    decision = Postprocessing(("background", "box", "slab"), largest_component_classes=("box",))
    (tmp_path / "cv" / POSTPROCESSING_FILE).write_text(json.dumps(decision.to_dict()))
    assert _infer(tmp_path / "cv", tmp_path / "scans", tmp_path / "raw", "--no_postprocessing") == 0
    assert _infer(tmp_path / "cv", tmp_path / "scans", tmp_path / "post") == 0
    raw, post = (np.asarray(nib.load(tmp_path / name / "a.nii.gz").dataobj) for name in ("raw", "post"))
    assert np.array_equal(raw, labels) and np.array_equal(post, phantom_labels())  # the speck is found, then removed
    assert json.loads((tmp_path / "raw" / "recipe.json").read_text())["postprocessing"] is None
    recorded = json.loads((tmp_path / "post" / "recipe.json").read_text())["postprocessing"]
    assert recorded["largest_component_classes"] == ["box"] and recorded["file"] == str(tmp_path / "cv" / POSTPROCESSING_FILE)


def test_postprocessing_chosen_for_other_classes_is_refused(members, scans, tmp_path, capsys):
    decision = Postprocessing(("background", "liver"), largest_component_classes=("liver",))
    (tmp_path / "cv" / POSTPROCESSING_FILE).write_text(json.dumps(decision.to_dict()))
    assert _infer(tmp_path / "cv", scans, tmp_path / "out") == 1
    assert capsys.readouterr().err.strip() == (
        f"medseg: error: {tmp_path / 'cv' / POSTPROCESSING_FILE} was chosen for classes ['background', 'liver'], "
        "but the models predict ['background', 'box', 'slab']"
    )
    assert not (tmp_path / "out").exists()


def test_one_model_always_stays_on_the_gpu_and_several_while_their_weights_take_a_quarter_of_free_memory():
    assert ensemble_stays_on_device([10 * MiB], free_bytes=1 * MiB)
    assert ensemble_stays_on_device([10 * MiB] * 5, free_bytes=200 * MiB)
    assert not ensemble_stays_on_device([10 * MiB] * 5, free_bytes=199 * MiB)


def test_the_weight_bytes_of_a_network_count_its_parameters_and_buffers():
    network = torch.nn.Sequential(torch.nn.Conv3d(1, 2, 3), torch.nn.BatchNorm3d(2))
    # float32: conv weight and bias, norm weight and bias, running mean and variance; int64: the norm's batch count
    assert weight_bytes(network) == 4 * (2 * 27 + 2 + 2 + 2 + 2 + 2) + 8


@pytest.mark.cuda
def test_models_that_do_not_fit_visit_the_gpu_in_turn_and_predict_the_same(members, monkeypatch):
    options = InferenceOptions(precision="32-true", device="cuda", window={"batch_size": 2})
    resident = Predictor([load_trained_model(path) for path in members], options)
    expected, _ = resident.probabilities(_image())
    monkeypatch.setattr(predictor_module, "ENSEMBLE_WEIGHTS_SHARE", 0.0)
    visiting = Predictor([load_trained_model(path) for path in members], options)
    probabilities, route = visiting.probabilities(_image())
    assert not visiting.resident and "visit cuda in turn" in route
    assert all(p.device.type == "cpu" for member in visiting.models for p in member.network.parameters())
    torch.testing.assert_close(probabilities, expected, rtol=0, atol=1e-5)
