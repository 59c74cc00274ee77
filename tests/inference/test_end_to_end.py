"""The demo path: train, segment the validation scans with the best checkpoint, evaluate them against their labels;
the Dice of what inference writes is the Dice validation reported."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import yaml

from medseg.data.formats import read_dataset
from medseg.data.split import split_cases
from medseg.evaluation import evaluate
from medseg.inference.command import main
from medseg.io.nifti import same_grid

# The shared run trains at the scans' own spacing, so validation's grid is the scan's up to reorientation and the
# body crop, which inference inverts exactly: the same labels, the same Dice. Under bf16 the windows' rounding
# differs between the two paths (a window batch of another size), which may flip a few voxels.
DICE_TOLERANCE = {"32-true": 1e-6, "16-mixed": 2e-3, "bf16-mixed": 2e-3}


def test_inference_of_the_validation_scans_scores_the_dice_validation_reported(trained_run, demo_root, tmp_path):
    data = yaml.safe_load((trained_run.log_dir / "config.yaml").read_text())["data"]
    _, validation = split_cases(read_dataset(demo_root).cases, data["num_folds"], data["fold"], data["split_seed"])
    (tmp_path / "scans").mkdir()
    for case in validation:
        (tmp_path / "scans" / case.images[0].name).symlink_to(case.images[0])
    assert main(["--checkpoint", str(trained_run.best_checkpoint), "--input", str(tmp_path / "scans"), "--output", str(tmp_path / "pred")]) == 0

    for case in validation:
        source, result = nib.load(case.images[0]), nib.load(tmp_path / "pred" / case.images[0].name)
        assert result.shape == source.shape and same_grid(result, source)
    evaluation = evaluate(tmp_path / "pred", demo_root / "labelsTr")  # raises if a grid differs
    assert len(evaluation.cases) == len(validation)
    for index, name in enumerate(evaluation.class_names):
        inferred = float(np.nanmean(evaluation.column("dice", index)))
        print(f"{name}: inferred {inferred:.6f}, validated {trained_run.metrics[f'val_dice_{name}']:.6f}")
        assert inferred == pytest.approx(trained_run.metrics[f"val_dice_{name}"], abs=DICE_TOLERANCE[trained_run.model.recipe.precision])
