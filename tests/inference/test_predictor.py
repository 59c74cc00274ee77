"""Whole-scan prediction: known segmentation, TTA, probabilities, in-memory images, stitching and OOM fallback; bad
scans refused with one line naming the file."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medseg.data.formats import Case
from medseg.errors import MedsegError
from medseg.inference import InferenceOptions, Predictor, load_trained_model, predict_volume
from medseg.inference.command import main
from medseg.inference.predictor import cudnn_autotuning, most_likely_class
from tests.helpers.bad_scans import huge_header, with_affine, with_block

from .conftest import SPACING_MM, phantom_hu, phantom_labels, save_scan

LPS = np.diag([-SPACING_MM, -SPACING_MM, SPACING_MM, 1.0])


@pytest.fixture(scope="module")
def phantom_scan(tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("scan") / "phantom.nii.gz"
    return save_scan(path, phantom_hu(phantom_labels()), LPS)


def test_trained_model_reproduces_the_known_segmentation(trained_checkpoint, phantom_scan):
    labels, affine = predict_volume(trained_checkpoint, phantom_scan)
    assert labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, phantom_labels())
    np.testing.assert_allclose(affine, LPS)


def test_flip_tta_keeps_the_known_segmentation(trained_checkpoint, phantom_scan):
    labels, _ = predict_volume(trained_checkpoint, phantom_scan, InferenceOptions(tta=True))
    np.testing.assert_array_equal(labels, phantom_labels())


def test_in_memory_nibabel_image_gives_the_same_labels_as_its_file(trained_checkpoint, phantom_scan):
    from_file, _ = predict_volume(trained_checkpoint, phantom_scan)
    from_memory, affine = predict_volume(trained_checkpoint, nib.load(phantom_scan))
    np.testing.assert_array_equal(from_memory, from_file)
    np.testing.assert_allclose(affine, LPS)


def test_probabilities_are_distributions_whose_argmax_is_the_labels(trained_checkpoint, phantom_scan):
    model = load_trained_model(trained_checkpoint)
    prediction = Predictor(model, InferenceOptions(probabilities=True)).predict(Case("phantom", (phantom_scan,)))
    assert prediction.probabilities.shape == phantom_labels().shape + (3,)
    np.testing.assert_allclose(prediction.probabilities.sum(axis=-1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(prediction.probabilities.argmax(axis=-1), prediction.labels)


def _bad_scans(folder: Path) -> dict[str, str]:
    """Write one good scan and five that must be refused into ``folder``; return what each refusal says after its path."""
    hu = phantom_hu(phantom_labels((24, 22, 20)))
    save_scan(folder / "good.nii.gz", hu, LPS)
    with_block(folder / "nan_block.nii.gz", hu, LPS, np.nan)
    with_block(folder / "inf_block.nii.gz", hu, LPS, np.inf)
    huge_header(folder / "huge_header.nii.gz")
    parallel_axes = np.array([[1.5, 1.5, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.5, 0.0], [0.0, 0.0, 0.0, 1.0]])
    with_affine(folder / "singular.nii.gz", hu, parallel_axes)
    with_affine(folder / "tiny_voxels.nii.gz", hu, np.diag([1e-5, 1e-5, 1e-5, 1.0]))
    return {
        "nan_block": "64 voxel(s) are NaN or infinite",
        "inf_block": "64 voxel(s) are NaN or infinite",
        "huge_header": "header claims 100000x100000x100000 voxels of float32",
        "singular": "the header's affine is singular",
        "tiny_voxels": "voxel spacing [1e-05, 1e-05, 1e-05] mm is outside",
    }


def test_bad_scans_are_refused_with_one_line_naming_the_file_while_the_others_are_done(random_checkpoint, tmp_path, capsys):
    scans = tmp_path / "scans"
    scans.mkdir()
    expected = _bad_scans(scans)
    run = ["--checkpoint", str(random_checkpoint), "--input", str(scans), "--output", str(tmp_path / "out"), "--window.batch_size", "2"]
    assert main(run) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"1 done, 0 skipped, {len(expected)} failed"
    failures = dict(line.removeprefix("failed ").split(": ", 1) for line in out[1:])
    assert sorted(failures) == sorted(expected)
    for name, message in expected.items():
        assert failures[name].startswith(f"{scans / name}.nii.gz: ") and message in failures[name], failures[name]
    assert (tmp_path / "out" / "good.nii.gz").exists() and not any((tmp_path / "out").glob("*_*.nii.gz"))


def test_a_non_finite_in_memory_image_is_refused(random_checkpoint, phantom_scan, tmp_path):
    voxels = np.asarray(nib.load(phantom_scan).dataobj).astype(np.float32)
    voxels[5, 5, 5] = np.inf
    with pytest.raises(MedsegError, match=r"1 voxel\(s\) are NaN or infinite"):
        predict_volume(random_checkpoint, nib.Nifti1Image(voxels, LPS))


def _image(seed: int = 0) -> torch.Tensor:
    return torch.rand(1, 1, 30, 26, 20, generator=torch.Generator().manual_seed(seed))


def test_cpu_windows_are_stitched_on_the_cpu_at_the_recipe_window_batch(random_checkpoint):
    probs, route = Predictor(load_trained_model(random_checkpoint), InferenceOptions(device="cpu")).probabilities(_image())
    assert probs.shape == (3, 30, 26, 20) and probs.device == torch.device("cpu")
    torch.testing.assert_close(probs.sum(dim=0), torch.ones(30, 26, 20))
    assert route == "windows on cpu (32-true, batch 4), stitched on cpu"


def test_cpu_windows_run_channels_last_weights_and_give_the_channels_first_probabilities(random_checkpoint):
    predictor = Predictor(load_trained_model(random_checkpoint), InferenceOptions(device="cpu", precision="32-true"))
    convolutions = [m.weight for m in predictor.models[0].network.modules() if isinstance(m, torch.nn.Conv3d)]
    assert convolutions and all(w.is_contiguous(memory_format=torch.channels_last_3d) for w in convolutions)
    channels_last, _ = predictor.probabilities(_image())
    predictor.models[0].network.to(memory_format=torch.contiguous_format)
    channels_first, _ = predictor.probabilities(_image())
    torch.testing.assert_close(channels_last, channels_first, atol=1e-5, rtol=1e-4)


@pytest.mark.cuda
def test_cuda_windows_at_fp32_equal_cpu_windows(random_checkpoint):
    fp32 = InferenceOptions(precision="32-true")
    on_cpu, _ = Predictor(load_trained_model(random_checkpoint), InferenceOptions(precision="32-true", device="cpu")).probabilities(_image())
    torch.backends.cudnn.allow_tf32 = False  # TF32 convolutions differ from fp32 in the 4th digit
    try:
        on_cuda, route = Predictor(load_trained_model(random_checkpoint), InferenceOptions(precision=fp32.precision, device="cuda")).probabilities(_image())
    finally:
        torch.backends.cudnn.allow_tf32 = True
    assert "windows on cuda" in route
    # cuDNN autotuning may pick FFT-based algorithms, whose fp32 rounding differs more than direct convolution's
    torch.testing.assert_close(on_cuda, on_cpu, atol=1e-4, rtol=1e-4)


class RunsOutOfMemoryAboveOneWindow(torch.nn.Module):
    """Wraps a network so any window batch larger than 1 fails the way CUDA does."""

    def __init__(self, network: torch.nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        if windows.shape[0] > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.network(windows)


def test_out_of_memory_halves_the_window_batch_and_retries_the_scan(trained_checkpoint, phantom_scan):
    expected, _ = predict_volume(trained_checkpoint, phantom_scan, InferenceOptions(window={"batch_size": 1}))
    model = load_trained_model(trained_checkpoint)
    object.__setattr__(model, "network", RunsOutOfMemoryAboveOneWindow(model.network))
    prediction = Predictor(model, InferenceOptions(window={"batch_size": 4})).predict(Case("phantom", (phantom_scan,)))
    np.testing.assert_array_equal(prediction.labels, expected)
    assert "batch 1" in prediction.route and "out of memory, retried with window batch 2" in prediction.route


def test_a_scan_that_ran_out_of_memory_does_not_lower_the_window_batch_of_the_next_scan(random_checkpoint):
    model = load_trained_model(random_checkpoint)
    object.__setattr__(model, "network", RunsOutOfMemoryAboveOneWindow(model.network))
    predictor = Predictor(model, InferenceOptions(window={"batch_size": 4}, device="cpu"))
    routes = [predictor.probabilities(_image(seed))[1] for seed in (0, 1)]
    assert routes[0] == routes[1]  # the second scan started again from 4, not from the first scan's 1
    assert routes[1].endswith("out of memory, retried with window batch 2; out of memory, retried with window batch 1")


def test_most_likely_class_is_argmax_with_the_first_class_on_ties():
    probabilities = torch.rand(4, 5, 6, 7).round(decimals=1)  # rounding makes ties
    assert torch.equal(most_likely_class(probabilities).long(), probabilities.argmax(dim=0))


@pytest.mark.parametrize("enabled", [True, False])
def test_windows_turn_cudnn_autotuning_on_for_a_gpu_only_and_restore_it(enabled, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)  # training (trainer.benchmark) may have turned it on
    with cudnn_autotuning(enabled):
        assert torch.backends.cudnn.benchmark == enabled
    assert not torch.backends.cudnn.benchmark  # a library call leaves the process's setting as it was


def test_inference_options_refuse_a_window_setting_at_once():
    with pytest.raises(MedsegError, match=r"unknown window settings \['sw_batch_size'\]"):
        InferenceOptions(window={"sw_batch_size": 2})
    with pytest.raises(MedsegError, match="window overlap must be in"):
        InferenceOptions(window={"overlap": 1.0})
