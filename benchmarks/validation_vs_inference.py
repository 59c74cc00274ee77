"""Dice of a training run's validation against Dice of `medseg.infer` + `medseg.evaluate` on the same cases.

Validation scores on the preprocessed grid; inference writes label maps on each scan's own grid and evaluation
scores there, so the two differ only by resampling. Reads the run's config.yaml for the dataset and split:
    python benchmarks/validation_vs_inference.py --run runs/medseg/version_0
"""

from __future__ import annotations

import argparse
import json
import csv
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from medseg.data.demo import cache_folder, ensure_demo_dataset
from medseg.data.formats import read_dataset
from medseg.data.split import RUN_SPLIT_FILE


def last_validation(metrics_csv: Path) -> dict[str, float]:
    """Return the last logged validation metrics (the summary's validation of the best checkpoint)."""
    with open(metrics_csv) as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("val_mean_dice")]
    return {key: float(value) for key, value in rows[-1].items() if key.startswith("val_") and value}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="run folder with config.yaml, metrics.csv and checkpoints/")
    args = parser.parse_args()
    config = yaml.safe_load((args.run / "config.yaml").read_text())
    data = config["data"]
    root = data["root"] or ensure_demo_dataset(cache_folder(data.get("cache_dir")))
    spec = read_dataset(root)
    val_names = json.loads((args.run / RUN_SPLIT_FILE).read_text())["val"]  # the fold the run trained on
    validation = [case for case in spec.cases if case.name in val_names]
    [best] = sorted((args.run / "checkpoints").glob("best-*.ckpt"))
    with tempfile.TemporaryDirectory(prefix="medseg-val-") as work:
        scans, predictions = Path(work) / "scans", Path(work) / "predictions"
        scans.mkdir()
        for case in validation:
            (scans / case.images[0].name).symlink_to(case.images[0])
        python = sys.executable
        subprocess.run([python, "-m", "medseg.infer", "--checkpoint", str(best), "--input", str(scans), "--output", str(predictions)], check=True)
        evaluated = subprocess.run([python, "-m", "medseg.evaluate", "--pred", str(predictions), "--gt", str(spec.root)], check=True, capture_output=True, text=True)
    print(f"checkpoint {best}, {len(validation)} validation cases")
    print("validation at the end of training:", {k: round(v, 4) for k, v in last_validation(args.run / "metrics.csv").items()})
    print("medseg.infer + medseg.evaluate:\n" + evaluated.stdout)


if __name__ == "__main__":
    main()
