"""Sliding-window inference on whole scans: checkpoint loading, prediction, geometry-exact NIfTI output."""

from medseg.inference.checkpoint import TrainedModel, load_trained_model
from medseg.inference.predictor import InferenceOptions, Prediction, Predictor, predict_volume
from medseg.inference.runner import RunSummary, segment_scans

__all__ = [
    "InferenceOptions",
    "Prediction",
    "Predictor",
    "RunSummary",
    "TrainedModel",
    "load_trained_model",
    "predict_volume",
    "segment_scans",
]
