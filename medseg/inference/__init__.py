"""Inference on whole scans: checkpoint loading, sliding-window prediction, geometry-exact output, postprocessing
(its choice on cross-validation too) and the commands (``command``: ``python -m medseg.infer``; ``postprocess_command``:
``python -m medseg.postprocess``).

Names load on first use, so that the commands' ``--help`` answers without torch.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(__name__, submod_attrs={
    "checkpoint": ["TrainedModel", "load_trained_model"],
    "postprocessing": ["Postprocessing", "choose_postprocessing"],
    "predictor": ["InferenceOptions", "Prediction", "Predictor", "predict_volume"],
    "runner": ["RunSummary", "segment_scans"],
})
