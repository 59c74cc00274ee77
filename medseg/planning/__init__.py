"""The planner: what a training step costs in memory, the batch that fits, and a whole configuration from a dataset.

``step`` (the trial step and the optimizer training uses), the step-cost backends ``cuda_steps`` (real CUDA steps),
``fake_tensor`` (a GPU that is not here) and ``medseg.testing.SimulatedDevice`` (tests), ``batch_search`` (fit, verify, bisect; the
``BatchPlan`` record), ``budget``, ``cache``, ``on_device`` (a model's plan on one device), ``oom``,
``precision_comparison`` and ``report`` (FP32 vs mixed precision); ``dataset_plan``, ``rules`` and ``store`` plan a
configuration from a dataset (``python -m medseg.plan``).
"""
