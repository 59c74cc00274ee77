"""ThroughputMonitor: patches/s and data-wait share logged once per epoch."""

from __future__ import annotations

from medseg.training.throughput import ThroughputMonitor
from tests.helpers.stand_ins import RandomPatches


def test_epoch_logs_patches_per_second_and_data_wait_share(tiny_module, make_trainer):
    monitor = ThroughputMonitor()
    trainer = make_trainer(callbacks=[monitor])
    trainer.fit(tiny_module, datamodule=RandomPatches(batch_size=2, num_samples=8))
    assert monitor.last.steps == 3 and monitor.last.peak_gpu_gib is None  # 4 steps, the first left out; no GPU
    assert monitor.last.patches_per_s > 0 and 0.0 <= monitor.last.data_wait_share < 1.0
    assert {"train_patches_per_s", "train_data_wait"} <= set(trainer.callback_metrics)
