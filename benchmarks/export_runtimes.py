"""An exported model in each runtime against the PyTorch checkpoint path, end to end on real-size scans, in one run.

On ``--scans`` CT-like scans of 192x192x112 voxels (``medseg.testing.write_ct_phantoms``) and the spleen UNet of
benchmarks/inference.py (random weights, trained "16-mixed", overlap 0.5), the checkpoint is exported once
(``medseg.exporting.export_model``), then ``medseg.inference.segment_scans`` (what ``python -m medseg.infer`` runs)
segments every scan with: the checkpoint; the export's TorchScript program (``--runtime torch``); ONNX Runtime; and
OpenVINO (where installed), each at fp32 and, where the runtime has it, bf16 (the default on a CPU with native bf16;
a CPU without it runs fp32, the fp32 rows); and MONAI's bundle runner on the export's ``configs/inference.json``. Each way is a whole run (weights read, scans read, windows, inversion,
label maps written); the ways are interleaved ``--repeats`` times, so a busy machine slows all alike, and the fastest
of each is kept. Labels are compared voxel by voxel with the checkpoint's fp32 labels.

    python -m benchmarks.export_runtimes --output benchmarks/results/export_runtimes/export_runtimes_cpu
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
from monai.bundle import run as run_bundle

from benchmarks.common import add_output_option, markdown_rows, write_results
from benchmarks.inference import write_checkpoints
from medseg.exporting import export_model
from medseg.model.runtimes import installed
from medseg.inference import InferenceOptions, segment_scans
from medseg.option_values import RUNTIMES
from medseg.precision import cpu_has_native_bf16
from medseg.testing import write_ct_phantoms

REFERENCE = "checkpoint, 32-true"
BUNDLE = "MONAI bundle runner, 32-true"  # the export's configs/inference.json, run by MONAI (fp32: bundles run no autocast)


def agreement(made: Path, reference: Path) -> float:
    """Return the share of voxels on which two folders' label maps agree."""
    equal = total = 0
    for file in sorted(reference.glob("*.nii.gz")):
        ours, theirs = np.asarray(nib.load(made / file.name).dataobj), np.asarray(nib.load(file).dataobj)
        equal, total = equal + int((ours == theirs).sum()), total + ours.size
    return equal / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(Path(tempfile.gettempdir()) / "medseg-training-benchmark"), help="scans (medseg.testing.write_ct_phantoms)")
    parser.add_argument("--scans", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=1)
    add_output_option(parser)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    root = write_ct_phantoms(Path(args.data))
    runtimes = [runtime for runtime in RUNTIMES if runtime == "torch" or installed(runtime)]
    with tempfile.TemporaryDirectory(prefix="medseg-export-bench-") as tmp:
        tmp = Path(tmp)
        checkpoint, _, recipe = write_checkpoints(tmp)
        scans = tmp / "scans"
        scans.mkdir()
        for scan in sorted((root / "imagesTr").glob("*.nii.gz"))[: args.scans]:
            (scans / scan.name).symlink_to(scan)
        start = time.perf_counter()
        export = export_model([checkpoint], tmp / "export").folder
        export_seconds = time.perf_counter() - start
        ways: dict[str, tuple[Path, InferenceOptions]] = {}
        for precision in ("32-true", "bf16-mixed"):
            ways[f"checkpoint, {precision}"] = (checkpoint, InferenceOptions(device="cpu", precision=precision))
            for runtime in runtimes:
                if runtime == "onnxruntime" and precision != "32-true":
                    continue  # ONNX Runtime's CPU provider runs the graph's fp32
                ways[f"export {runtime}, {precision}"] = (export, InferenceOptions(device="cpu", precision=precision, runtime=runtime))
        times: dict[str, list[float]] = {name: [] for name in [*ways, BUNDLE]}
        for _ in range(args.repeats):
            for name, (model, options) in ways.items():
                start = time.perf_counter()
                summary = segment_scans(model, scans, tmp / name, options, overwrite=True)
                times[name].append(time.perf_counter() - start)
                assert not summary.failed, summary.failed
            start = time.perf_counter()
            run_bundle(config_file=str(export / "configs" / "inference.json"), dataset_dir=str(scans), output_dir=str(tmp / BUNDLE))
            times[BUNDLE].append(time.perf_counter() - start)
        agreements = {name: agreement(tmp / name, tmp / REFERENCE) for name in times}
    fastest = {name: min(seconds) for name, seconds in times.items()}
    results = {
        "scans": args.scans, "scan_shape": [192, 192, 112], "patch": list(recipe.patch_size), "overlap": recipe.window.overlap,
        "native_bf16": cpu_has_native_bf16(), "load_average_after": [round(v, 1) for v in os.getloadavg()], "repeats": args.repeats,
        "export_seconds": round(export_seconds, 1),
        "ways": {name: {"seconds": round(fastest[name], 2), "all_seconds": [round(v, 2) for v in times[name]],
                        "speed_vs_checkpoint_fp32": round(fastest[REFERENCE] / fastest[name], 3),
                        "speed_vs_checkpoint_same_precision": round(fastest[f"checkpoint, {name.split(', ')[1]}"] / fastest[name], 3),
                        "voxel_agreement_vs_checkpoint_fp32": agreements[name]} for name in times},
    }
    rows = [{"way": name, "seconds (fastest)": f"{fastest[name]:.2f}", "vs checkpoint fp32": f"{fastest[REFERENCE] / fastest[name]:.2f}x",
             "vs checkpoint, same precision": f"{results['ways'][name]['speed_vs_checkpoint_same_precision']:.2f}x",
             "voxels equal to checkpoint fp32": f"{100 * agreements[name]:.4f} %"} for name in times]
    text = (f"{args.scans} CT-like scans of 192x192x112, spleen UNet (16-256, 2 residual units), patch 96^3, overlap "
            f"{recipe.window.overlap}, whole runs of `segment_scans` (python -m medseg.infer), fastest of {args.repeats}, interleaved. "
            f"This CPU has native bf16: {results['native_bf16']}. Export took {export_seconds:.1f} s. Load average after: "
            f"{results['load_average_after']} (a shared machine: compare rows of one run only).\n\n{markdown_rows(rows)}\n")
    print(text)
    write_results(args.output, "Exported model: runtimes against the checkpoint path", results, text)


if __name__ == "__main__":
    main()
