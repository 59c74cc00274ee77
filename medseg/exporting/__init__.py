"""Export: a trained model as one folder that runs outside medseg's Python: ONNX and TorchScript networks, the recipe,
the postprocessing, a manifest and a MONAI bundle (``writer``, ``bundle``), and the command (``command``:
``python -m medseg.export``).

Names load on first use, as in the other stages.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(__name__, submod_attrs={
    "bundle": ["inference_config", "metadata"],
    "check": ["CheckResult", "check_export"],
    "writer": ["ExportResult", "export_model"],
})
