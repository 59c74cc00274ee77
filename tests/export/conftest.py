"""An export of a small cross-validation folder (two runs of the shared tiny trained model, and a postprocessing
choice), made once per session, with the scans its tests segment."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from medseg.inference.postprocessing import Postprocessing
from medseg.option_values import POSTPROCESSING_FILE

# Coarser than the demo scans and isotropic, so that segmenting resamples (the demo's are oblique and anisotropic)
RESAMPLED_SPACING = [1.6, 1.6, 1.6]


@pytest.fixture(scope="session")
def cv_folder(_trained_runs, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cross-validation folder of two fold runs (the shared fp32 tiny run's best and last weights) whose recipe resamples
    to ``RESAMPLED_SPACING``, and a postprocessing choice (largest foreground component)."""
    run = _trained_runs(False)
    folder = tmp_path_factory.mktemp("cv")
    for fold, source in enumerate([run.best_checkpoint, run.last_checkpoint]):
        checkpoint = torch.load(source, map_location="cpu", weights_only=True)
        checkpoint["medseg"]["preprocessing"]["spacing"] = RESAMPLED_SPACING
        target = folder / f"fold_{fold}" / "version_0" / "checkpoints" / "best-epoch=001.ckpt"
        target.parent.mkdir(parents=True)
        torch.save(checkpoint, target)
    class_names = tuple(checkpoint["medseg"]["class_names"])
    (folder / POSTPROCESSING_FILE).write_text(json.dumps(Postprocessing(class_names, foreground_largest_component=True).to_dict()))
    return folder


@pytest.fixture(scope="session")
def exported(cv_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The export of ``cv_folder`` (read-only for tests: copy before changing)."""
    from medseg.exporting import export_model

    return export_model([cv_folder], tmp_path_factory.mktemp("exports") / "model").folder


@pytest.fixture(scope="session")
def scans(demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of two demo scans."""
    folder = tmp_path_factory.mktemp("scans")
    for path in sorted((demo_root / "imagesTr").glob("*.nii.gz"))[:2]:
        shutil.copy(path, folder / path.name)
    return folder
