"""Back onto the scan's grid slab by slab: the labels and probabilities of the whole-volume path (softmax, MONAI
Invertd, argmax), on scans that need no resampling (exactly) and on scans that do (labels exactly, probabilities
to float32 rounding), without a whole-scan tensor of every class."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from medseg.data.formats import Case
from medseg.data.transforms import Preprocessing
from medseg.inference import InferenceOptions, Predictor, load_trained_model
from tests.helpers.largest_tensor import LargestTensor
from tests.helpers.whole_volume import whole_volume_prediction

from .conftest import SPACING_MM, phantom_hu, phantom_labels, save_scan

LPS = np.diag([-SPACING_MM, -SPACING_MM, SPACING_MM, 1.0])
ANGLE = 0.3
OBLIQUE = np.array([[np.cos(ANGLE), -np.sin(ANGLE), 0, 4], [np.sin(ANGLE), np.cos(ANGLE), 0, -2], [0, 0, 1, 7], [0, 0, 0, 1.0]]) @ np.diag([1.2, 1.2, 2.0, 1])
# scan axes that are the network's (R, A, S) in another order, at other spacings
PERMUTED = np.array([[0, 0, 1.2, 3], [-0.9, 0, 0, 5], [0, 1.4, 0, -2], [0, 0, 0, 1.0]])
SPACED = Preprocessing(spacing=(SPACING_MM,) * 3)

NO_RESAMPLING = {
    "at the recipe's spacing": (LPS, SPACED),
    "without spacing": (LPS, Preprocessing(spacing=None)),
    "without spacing or crop": (LPS, Preprocessing(spacing=None, crop_foreground=False)),
}
RESAMPLED = {
    "finer than the recipe": (np.diag([-1.0, -1.1, 1.3, 1.0]), SPACED),
    "coarser than the recipe": (np.diag([2.0, 2.0, 3.0, 1.0]), SPACED),
    "with permuted axes": (PERMUTED, SPACED),
    "oblique": (OBLIQUE, SPACED),
}


def _predictions(checkpoint, tmp_path, affine: np.ndarray, preprocessing: Preprocessing, shape=(40, 36, 32)):
    model = load_trained_model(checkpoint)
    model = dataclasses.replace(model, recipe=model.recipe.with_changes(preprocessing=preprocessing))
    hu = phantom_hu(phantom_labels(shape)) + np.random.default_rng(0).normal(0, 30, shape).astype(np.float32)
    case = Case("scan", (save_scan(tmp_path / "scan.nii.gz", hu, affine),))
    predictor = Predictor(model, InferenceOptions(device="cpu", precision="32-true", probabilities=True))
    labels, probabilities = whole_volume_prediction(predictor, predictor.read(case))
    return predictor.predict(case), labels.numpy(), probabilities.permute(1, 2, 3, 0).numpy()


@pytest.mark.parametrize("geometry", NO_RESAMPLING)
def test_without_resampling_labels_and_probabilities_are_the_whole_volume_paths_exactly(random_checkpoint, tmp_path, geometry):
    prediction, labels, probabilities = _predictions(random_checkpoint, tmp_path, *NO_RESAMPLING[geometry])
    np.testing.assert_array_equal(prediction.labels, labels)
    np.testing.assert_array_equal(prediction.probabilities, probabilities)


@pytest.mark.parametrize("geometry", RESAMPLED)
def test_resampled_labels_are_the_whole_volume_paths_and_probabilities_match_to_rounding(random_checkpoint, tmp_path, geometry):
    prediction, labels, probabilities = _predictions(random_checkpoint, tmp_path, *RESAMPLED[geometry])
    assert int((prediction.labels != labels).sum()) == 0  # voxels flipped by the interpolation's rounding
    np.testing.assert_allclose(prediction.probabilities, probabilities, rtol=0, atol=1e-5)
    np.testing.assert_allclose(prediction.probabilities.sum(axis=-1), 1.0, atol=1e-5)


@pytest.mark.parametrize("spacing", [None, (2 * SPACING_MM, SPACING_MM, SPACING_MM)], ids=["as scanned", "resampled"])
def test_prediction_holds_no_tensor_of_every_class_over_the_scan(random_checkpoint, tmp_path, spacing):
    shape = (120, 24, 20)
    path = save_scan(tmp_path / "long.nii.gz", np.zeros(shape, np.float32), LPS)
    model = load_trained_model(random_checkpoint)
    model = dataclasses.replace(model, recipe=model.recipe.with_changes(preprocessing=Preprocessing(spacing=spacing, crop_foreground=False)))
    predictor = Predictor(model, InferenceOptions(device="cpu"))
    scan = predictor.read(Case("long", (path,)))
    with LargestTensor() as largest:
        predictor.predict(scan)
    every_class_over_the_scan = model.recipe.out_channels * int(np.prod(shape)) * 4
    assert largest.bytes * 2 < every_class_over_the_scan
