"""Planning: what a training step costs in memory, the batch that fits, a whole configuration from a dataset, and
the commands that show them (``command``: ``python -m medseg.plan``; ``memory_command``: ``python -m medseg.memory``,
FP32 vs mixed precision).

``step`` (the trial step and the optimizer training uses), the step-cost backends ``cuda_steps`` (real CUDA steps),
``fake_tensor`` (a GPU that is not here) and ``medseg.testing.SimulatedDevice`` (tests), ``batch_search`` (fit, verify, bisect; the
``BatchSearchResult`` record), ``budget``, ``cache``, ``on_device`` (a model's batch search on one device), ``oom``,
``precision_comparison`` and ``report`` (FP32 vs mixed precision); ``dataset_plan``, ``rules`` and ``store`` plan a
configuration from a dataset. Names load on first use, so that the commands' ``--help`` answers without torch.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(__name__, submod_attrs={
    "batch_search": ["BatchSearchResult", "search_batch_size"],
    "cache": ["PlanningCache"],
    "dataset_plan": ["PrecisionConfig", "DatasetPlan"],
    "precision_comparison": ["estimated_batch_searches", "measured_batch_searches"],
    "report": ["format_table", "plot_memory", "save_report"],
    "store": ["StoredPlan", "plan_dataset", "plan_for_training"],
})
