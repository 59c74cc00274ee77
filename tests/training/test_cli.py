"""A DDP run ends its process group before ``run`` returns: gloo's threads left alive at exit abort the process."""

import os
from pathlib import Path
from unittest import mock

import pytest
import torch

from medseg.training.cli import run
from tests.helpers.cli import tiny_train_args


def _gloo_threads() -> list[str]:
    tasks = Path("/proc/self/task")
    return [name for name in ((task / "comm").read_text().strip() for task in tasks.iterdir()) if "gloo" in name]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch without distributed support")
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="lists threads through /proc (Linux)")
def test_a_ddp_run_destroys_its_process_group_and_joins_gloos_threads(demo_root, tmp_path):
    args = tiny_train_args(demo_root, tmp_path) + [
        "--trainer.strategy=ddp", "--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.precision=32-true",
        "--trainer.max_epochs=1", "--data.iterations_per_epoch=1", "--trainer.num_sanity_val_steps=0",
    ]
    with mock.patch.dict(os.environ):  # Lightning's launcher sets MASTER_PORT, LOCAL_RANK, WORLD_SIZE for its ranks
        try:
            run(args)
            assert not torch.distributed.is_initialized()
            assert _gloo_threads() == []  # its workers free collectives' tensors, and need the GIL for it
        finally:
            if torch.distributed.is_initialized():
                torch.distributed.destroy_process_group()
