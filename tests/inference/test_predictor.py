"""Whole-scan prediction: known segmentation, TTA, probabilities, in-memory images, stitching and OOM fallback."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from medseg.inference import InferenceOptions, Predictor, load_trained_model, predict_volume
from medseg.inference.io import open_scan
from medseg.inference.predictor import output_fits_on_device, sliding_window_probabilities

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
    prediction = Predictor(model, InferenceOptions(probabilities=True)).predict(open_scan(phantom_scan, 1))
    assert prediction.probabilities.shape == phantom_labels().shape + (3,)
    np.testing.assert_allclose(prediction.probabilities.sum(axis=-1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(prediction.probabilities.argmax(axis=-1), prediction.labels)


def _image(seed: int = 0) -> torch.Tensor:
    return torch.rand(1, 1, 30, 26, 20, generator=torch.Generator().manual_seed(seed))


def test_stitching_on_cpu_equals_stitching_on_the_window_device(random_checkpoint):
    model = load_trained_model(random_checkpoint)
    cpu, options = torch.device("cpu"), InferenceOptions()
    on_device = sliding_window_probabilities(model.network, _image(), model.patch_size, options, 4, cpu, cpu)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.network.to(device)
    stitched_on_cpu = sliding_window_probabilities(model.network, _image(), model.patch_size, options, 4, device, cpu)
    assert stitched_on_cpu.device == cpu
    torch.testing.assert_close(stitched_on_cpu, on_device, atol=1e-5, rtol=1e-5)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_windows_stitched_on_cpu_equal_all_on_cuda(random_checkpoint):
    model = load_trained_model(random_checkpoint, device="cuda")
    cuda, cpu, options = torch.device("cuda"), torch.device("cpu"), InferenceOptions(mixed_precision=False)
    on_cuda = sliding_window_probabilities(model.network, _image(), model.patch_size, options, 4, cuda, cuda)
    on_cpu = sliding_window_probabilities(model.network, _image(), model.patch_size, options, 4, cuda, cpu)
    torch.testing.assert_close(on_cpu, on_cuda.cpu(), atol=1e-5, rtol=1e-5)


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
    expected, _ = predict_volume(trained_checkpoint, phantom_scan, InferenceOptions(sw_batch_size=1))
    model = load_trained_model(trained_checkpoint)
    object.__setattr__(model, "network", RunsOutOfMemoryAboveOneWindow(model.network))
    prediction = Predictor(model, InferenceOptions(sw_batch_size=4)).predict(open_scan(phantom_scan, 1))
    np.testing.assert_array_equal(prediction.labels, expected)
    assert "batch 1" in prediction.route and "out of memory, retried with window batch 2" in prediction.route


def test_output_too_large_for_free_gpu_memory_is_stitched_on_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (2 * 2**30, 80 * 2**30))
    cuda = torch.device("cuda")
    assert not output_fits_on_device((512, 512, 600), 1, 3, cuda)  # 5 float32 volumes: 3.1 GB > half of 2 GiB
    assert output_fits_on_device((128, 128, 128), 1, 3, cuda)
    assert output_fits_on_device((512, 512, 600), 1, 3, torch.device("cpu"))
