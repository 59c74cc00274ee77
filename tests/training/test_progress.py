"""The training progress bar: redrawn on a clock, not at every step, and installed by the training command."""

from __future__ import annotations

import lightning as L
import pytest

from medseg.training.cli import build_cli
from medseg.training.progress import ProgressBar
from tests.helpers.cli import tiny_train_args
from tests.helpers.stand_ins import RandomPatches


class ShownSteps(L.Callback):
    """Records the step count the training bar shows after each step."""

    def __init__(self, bar: ProgressBar) -> None:
        self.bar = bar
        self.shown: list[int] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.shown.append(self.bar.train_progress_bar.n)


@pytest.mark.parametrize(("interval_s", "expected"), [(3600.0, [1, 1, 1, 1, 1, 6]), (0.0, [1, 2, 3, 4, 5, 6])])
def test_bar_redraws_once_per_interval_and_at_its_end(tiny_module, make_trainer, interval_s, expected):
    bar = ProgressBar(interval_s=interval_s)
    shown = ShownSteps(bar)
    trainer = make_trainer(max_epochs=1, enable_progress_bar=True, callbacks=[bar, shown], precision="32-true")
    trainer.fit(tiny_module, datamodule=RandomPatches(batch_size=2, num_samples=12))
    assert shown.shown == expected


def test_training_command_uses_it_unless_the_bar_is_off_or_another_is_given(demo_root, tmp_path):
    args = [arg for arg in tiny_train_args(demo_root, tmp_path) if not arg.startswith("--trainer.enable_progress_bar")]
    assert isinstance(build_cli(args).trainer.progress_bar_callback, ProgressBar)
    assert build_cli([*args, "--trainer.enable_progress_bar=false"]).trainer.progress_bar_callback is None
    given = build_cli([*args, "--trainer.callbacks+=lightning.pytorch.callbacks.TQDMProgressBar"]).trainer.progress_bar_callback
    assert type(given).__name__ == "TQDMProgressBar"
