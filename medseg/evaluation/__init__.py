"""Evaluation: Dice and HD95 per class and the mean over cases (``metrics``), and the evaluate command
(``command``: ``python -m medseg.evaluate``).

Names load on first use, as in the other stages.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(__name__, submod_attrs={
    "metrics": ["CaseScores", "Evaluation", "dice_per_class", "evaluate", "mean_over_cases", "paired_files", "read_label_pair", "score_case"],
})
