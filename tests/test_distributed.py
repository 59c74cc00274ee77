"""A real 2-process DDP fit on CPU (gloo): it finishes, writes one set of checkpoints, and logs the Dice
that one process computes on the whole validation set at the precision the run recorded."""

import csv
import subprocess
import sys

import lightning as L
import pytest
import torch

from medseg.training.datamodule import SegmentationDataModule
from medseg.training.module import SegmentationModule
from tests.test_train import REPO, _tiny_args


def _last_logged(metrics_csv, key: str) -> float:
    with open(metrics_csv) as handle:
        values = [row[key] for row in csv.DictReader(handle) if row.get(key)]
    return float(values[-1])


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch without distributed support")
@pytest.mark.parametrize("precision", [None, "32-true", "bf16-mixed"], ids=["machine-default", "32-true", "bf16-mixed"])
def test_two_process_ddp_fit_matches_single_process_validation(demo_root, tmp_path, precision):
    out = tmp_path / "ddp"
    args = _tiny_args(demo_root, out) + ["--trainer.strategy=ddp", "--trainer.accelerator=cpu", "--trainer.devices=2", "--data.num_folds=2"]
    if precision is not None:
        args.append(f"--trainer.precision={precision}")
    result = subprocess.run([sys.executable, "-m", "medseg.train", *args], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("Validation Dice of the best checkpoint") == 1  # only rank 0 reports
    runs = list((out / "medseg").iterdir())
    assert len(runs) == 1
    checkpoints = sorted(p.name for p in (runs[0] / "checkpoints").iterdir())
    assert checkpoints[0].startswith("best-") and checkpoints[1:] == ["last.ckpt", "latest-epoch001.ckpt"]
    logged = _last_logged(runs[0] / "metrics.csv", "val_mean_dice")  # trainer.validate() of the best checkpoint

    best = torch.load(runs[0] / "checkpoints" / checkpoints[0], map_location="cpu", weights_only=True)
    recorded = best["medseg"]["precision"]
    assert recorded == (precision or ("bf16-mixed" if "running bf16-mixed" in result.stderr else "32-true"))
    model = SegmentationModule(**best["hyper_parameters"])
    model.load_state_dict(best["state_dict"])
    data = SegmentationDataModule(str(demo_root), patch_size=(32, 32, 16), num_folds=2, num_workers=0)
    trainer = L.Trainer(accelerator="cpu", devices=1, precision=recorded, logger=False, enable_progress_bar=False, enable_model_summary=False)
    [single] = trainer.validate(model, datamodule=data, verbose=False)
    assert len(data.val_cases) == 3  # odd: the two ranks validate 2 and 1 cases
    assert logged == pytest.approx(single["val_mean_dice"], abs=1e-6)
