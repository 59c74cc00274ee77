"""OOM-aware batch sizing: measure a training step's memory per precision, plan the largest safe batch, recover from OOM.

Modules: ``measure`` (one trial step, CUDA peak), ``estimate`` (CPU byte count), ``simulate`` (stand-in GPU of
fixed capacity), ``plan`` (fit, verify, bisect, cache), ``report`` (table, JSON, plot), ``callback`` (Lightning
integration), ``recovery`` (resume with a smaller batch after an OOM); ``python -m medseg.memory`` compares precisions.
"""
