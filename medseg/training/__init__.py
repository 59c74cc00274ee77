"""Training: everything that knows Lightning (CLI, LightningModule, data module, batch-planner callback, OOM recovery),
cross-validation (``--data.fold all``) and the train command (``command``: ``python -m medseg.train``).

Names load on first use, so that importing one module of the package does not load Lightning.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(__name__, submod_attrs={
    "cli": ["TrainResult", "run"],
    "cross_validation": ["SUMMARY_FILE", "run_cross_validation", "summary_table"],
    "datamodule": ["SegmentationDataModule"],
    "module": ["SegmentationModule"],
})
