"""``python -m medseg.memory``: the FP32 vs mixed-precision memory comparison, a view of the batch planner in
``medseg.planning``."""
