"""Planning a training configuration from a dataset's fingerprint and a GPU's memory (``python -m medseg.plan``)."""
