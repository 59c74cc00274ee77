"""Peak memory and time of whole-scan inference on a large CT, medseg against MONAI's ``sliding_window_inference``.

One synthetic CT (seeded; a body of soft tissue with organs of several intensities in air, RAS, no resampling) of
``--size`` voxels, segmented with one untrained MONAI UNet (seeded, ``--network`` arguments) per class count, the same
windows (``--patch``, ``--overlap``, Gaussian blending, ``--batch`` windows a pass) at fp32 on the CPU. Each run is a
separate process, so its peak RSS (``ru_maxrss``) is its own; time is from reading the scan to the label map:
  * ``monai``: LoadImage, EnsureChannelFirst, ScaleIntensityRange (medseg's "ct" normalization), then
    ``sliding_window_inference`` and the argmax a user does;
  * ``medseg``: ``Predictor.predict`` of this checkout (windows blended, reduced and put back on the scan's grid slab
    by slab);
  * ``medseg-before``: the same call in the checkout ``--before`` names (medseg before slab-by-slab inference:
    whole-volume logits, softmax, Invertd, argmax), where it fits in memory.
Labels are compared voxel for voxel against medseg's (``flips``). Where medseg-before runs, it and medseg run
``--repeats`` times interleaved (the fastest time is kept); MONAI runs once.

    python -m benchmarks.large_scan --before /tmp/medseg-before --output benchmarks/results/large_scan/large_scan_cpu
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from benchmarks.common import REPO, add_output_option, write_results

CT_WINDOW = (-200.0, 300.0)
# A light UNet (the demo's architecture, fewer channels) keeps a 512x512x600 run to minutes on two cores; memory is the
# stitching's, which does not depend on the network's width.
NETWORK = {"channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 0}



def write_scan(path: Path, size: tuple[int, int, int]) -> None:
    """Write a CT-like scan: air around a soft-tissue body holding boxes of 19 HU levels, with noise (seeded)."""
    rng = np.random.default_rng(0)
    hu = np.full(size, -1000, np.int16)
    x, y, z = size
    hu[x // 10 : -x // 10, y // 10 : -y // 10, :] = -50
    for level in range(19):
        corner = [int(rng.integers(s // 10, s - s // 10 - s // 6)) for s in size]
        hu[tuple(slice(c, c + s // 6) for c, s in zip(corner, size))] = -150 + 25 * level
    hu += rng.normal(0, 20, size).astype(np.int16)
    nib.save(nib.Nifti1Image(hu, np.diag([0.8, 0.8, 1.0, 1.0])), path)


def child(args: argparse.Namespace) -> None:
    """Run one side in this process, with the medseg its launcher put first on the path; print its seconds and peak RSS
    as JSON and save its labels."""
    import torch
    from monai.inferers import sliding_window_inference
    from monai import transforms as T

    from medseg.data.formats import Case
    from medseg.data.transforms import Preprocessing
    from medseg.inference import InferenceOptions, Predictor, TrainedModel
    from medseg.model.networks import build_network
    from medseg.recipe import Recipe, Window

    torch.manual_seed(0)
    network = build_network("UNet", 1, args.classes, **NETWORK).eval()
    start = time.perf_counter()
    if args.child == "monai":
        low, high = CT_WINDOW
        read = T.Compose([T.LoadImage(reader="NibabelReader", image_only=True), T.EnsureChannelFirst(),
                          T.ScaleIntensityRange(a_min=low, a_max=high, b_min=0.0, b_max=1.0, clip=True)])
        image = read(args.scan).float()[None]
        with torch.inference_mode():
            logits = sliding_window_inference(image, args.patch, args.batch, network, overlap=args.overlap, mode="gaussian")
            labels = logits.argmax(dim=1)[0].to(torch.uint8).numpy()
    else:
        recipe = Recipe("UNet", NETWORK, ("CT",), tuple(f"class{i}" for i in range(args.classes)), tuple(args.patch),
                        Preprocessing(spacing=None, crop_foreground=False, normalization="ct", ct_window=CT_WINDOW),
                        window=Window(overlap=args.overlap, gaussian=True, batch_size=args.batch))
        predictor = Predictor(TrainedModel(recipe, network, Path("untrained")), InferenceOptions(device="cpu", precision="32-true"))
        labels = predictor.predict(Case("scan", (Path(args.scan),))).labels
    seconds = time.perf_counter() - start
    np.save(args.labels, labels)
    print(json.dumps({"seconds": seconds, "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))


def run_side(side: str, classes: int, scan: Path, labels: Path, args: argparse.Namespace) -> dict:
    """Run one side in a fresh process; return its measurements (or why it did not finish)."""
    command = [sys.executable, "-m", "benchmarks.large_scan", "--child", side, "--scan", str(scan), "--labels", str(labels), "--classes", str(classes),
               "--patch", *map(str, args.patch), "--overlap", str(args.overlap), "--batch", str(args.batch)]
    # medseg from --before or this checkout, ahead of the working directory (PYTHONSAFEPATH) and what PYTHONPATH held
    checkout = args.before if side == "medseg-before" else REPO
    path = os.pathsep.join([str(checkout), str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    env = {**os.environ, "PYTHONSAFEPATH": "1", "PYTHONPATH": path}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    print(f"{classes} classes, {side}: {done.stdout.strip() or done.stderr.strip()[-500:]}", file=sys.stderr)
    if done.returncode != 0:
        return {"side": side, "classes": classes, "failed": f"exit {done.returncode}: {done.stderr.strip()[-300:]}"}
    return {"side": side, "classes": classes, **json.loads(done.stdout.strip().splitlines()[-1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", nargs=3, type=int, default=[512, 512, 600])
    parser.add_argument("--classes", nargs="+", type=int, default=[3, 20])
    parser.add_argument("--patch", nargs=3, type=int, default=[128, 128, 64])
    parser.add_argument("--overlap", type=float, default=0.25)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--before", type=Path, default=None, help="a checkout of medseg before slab-by-slab inference")
    parser.add_argument("--before-classes", nargs="+", type=int, default=[3],
                        help="class counts to run --before at (its whole-volume logits and softmax must fit in memory)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of medseg and medseg-before, interleaved; the fastest is kept")
    add_output_option(parser)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--scan", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--labels", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.classes = args.classes[0]
        return child(args)

    load_before = os.getloadavg()
    runs = []
    with tempfile.TemporaryDirectory() as work:
        scan = Path(work) / "scan.nii"
        write_scan(scan, tuple(args.size))
        for classes in args.classes:
            before = args.before is not None and classes in args.before_classes
            measured = {"monai": run_side("monai", classes, scan, Path(work) / f"monai-{classes}.npy", args)}
            for _ in range(args.repeats if before else 1):  # interleaved, so a busy machine slows both alike
                for side in ["medseg-before", "medseg"] if before else ["medseg"]:
                    run = run_side(side, classes, scan, Path(work) / f"{side}-{classes}.npy", args)
                    kept = measured.get(side)
                    if kept is None or "failed" in run or ("failed" not in kept and run["seconds"] < kept["seconds"]):
                        if kept is not None and "failed" not in kept and "failed" not in run:
                            run["peak_rss_bytes"] = max(run["peak_rss_bytes"], kept["peak_rss_bytes"])
                        measured[side] = run
                    elif "failed" not in kept:
                        kept["peak_rss_bytes"] = max(run["peak_rss_bytes"], kept["peak_rss_bytes"])
            ours = np.load(Path(work) / f"medseg-{classes}.npy") if "failed" not in measured["medseg"] else None
            for side, run in measured.items():
                if side != "medseg" and ours is not None and "failed" not in run:
                    run["flips_against_medseg"] = int((np.load(Path(work) / f"{side}-{classes}.npy") != ours).sum())
            runs += measured.values()
    result = {
        "platform": platform.platform(),
        "load_average_before_after": [round(v, 2) for v in (*load_before, *os.getloadavg())],
        "size": args.size, "patch": args.patch, "overlap": args.overlap, "window_batch": args.batch, "network": NETWORK,
        "voxels": int(np.prod(args.size)), "repeats": args.repeats, "runs": runs,
    }
    print(json.dumps(result, indent=2))
    write_results(args.output, f"Whole-scan inference on a {'x'.join(map(str, args.size))} CT: peak memory and time", result, markdown(result))


def markdown(result: dict) -> str:
    """Return the result as a short note with one table."""
    gib = 2**30
    lines = [
        f"Load average (1, 5, 15 min) before and after: {result['load_average_before_after']}.  ",
        f"Untrained UNet {result['network']}, window {result['patch']}, overlap {result['overlap']}, Gaussian blending, "
        f"window batch {result['window_batch']}, fp32, no resampling. Each run in its own process; MONAI once, and where "
        f"medseg-before runs, it and medseg {result['repeats']} times interleaved: the fastest time, the largest peak RSS.",
        "",
        "| classes | run | peak RSS (GiB) | seconds | peak RSS / MONAI's | time / medseg-before's | voxels whose label differs from medseg's |",
        "|---|---|---|---|---|---|---|",
    ]
    for run in result["runs"]:
        if "failed" in run:
            lines.append(f"| {run['classes']} | {run['side']} | did not finish: {run['failed'][:120]} | | | | |")
            continue
        monai = next((r for r in result["runs"] if r["classes"] == run["classes"] and r["side"] == "monai" and "failed" not in r), None)
        before = next((r for r in result["runs"] if r["classes"] == run["classes"] and r["side"] == "medseg-before" and "failed" not in r), None)
        memory = f"{run['peak_rss_bytes'] / monai['peak_rss_bytes']:.2f}" if monai else ""
        speed = f"{run['seconds'] / before['seconds']:.2f}" if before else ""
        lines.append(f"| {run['classes']} | {run['side']} | {run['peak_rss_bytes'] / gib:.2f} | {run['seconds']:.1f} | {memory} | {speed} | "
                     f"{run.get('flips_against_medseg', '')} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
