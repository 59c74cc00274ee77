"""Whole-scan inference end to end: medseg against MONAI's spleen tutorial test-set recipe, same scans, network and overlap.

On ``--scans`` CT-like scans of 192x192x112 voxels (benchmarks/training_benchmark.py writes them) and one MONAI UNet
(configs/spleen_ct.yaml's, 3 classes, random weights), each run reads the weights, then every scan, and writes
every label map, timed in one process:
  * ``tutorial``: spleen_segmentation_3d(_lightning).ipynb's test-set recipe: LoadImaged, EnsureChannelFirstd,
    Orientationd, Spacingd, ScaleIntensityRanged, CropForegroundd (DataLoader, 4 workers), then
    ``sliding_window_inference(x, (96, 96, 96), 4, net)`` (overlap 0.25, constant blending), then Invertd,
    AsDiscreted(argmax=True) and SaveImaged;
  * ``medseg-same-overlap``: ``medseg.inference.segment_scans`` (what ``python -m medseg.infer`` runs) at overlap 0.25;
  * ``medseg-defaults``: the same with every default (the recipe's overlap 0.5, precision from
    ``medseg.precision.inference_precision``: bf16 on CPUs with native bf16, else fp32).
The window stage alone is also timed on the first scan's preprocessed volume (or a random one of ``--size``):
the tutorial's call against medseg's ``Predictor.probabilities`` at overlap 0.25. With ``--device cuda`` both
recipes run their windows on the GPU (the tutorial moves its input there, as its notebook does); the window stage
then also times MONAI's call with the output stitched on the CPU (``device="cpu"``), and medseg at fp32, since
medseg's default there is the trained precision (fp16). medseg's GPU windows run with channels-last weights and cuDNN
autotuning; benchmarks/results/inference_cuda_autotuned.md measured each against neither, with this script's
version of the commit that added it. Runs are interleaved, ``--repeats`` times after one
warm-up each, so a busy machine slows all alike; the fastest of each is kept.

    python benchmarks/inference_benchmark.py --output benchmarks/results/inference_cpu
    python benchmarks/inference_benchmark.py --device cuda --size 512 512 256 --output benchmarks/results/inference_cuda
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable

import monai
import torch
from monai import transforms as T
from monai.data import DataLoader, Dataset, decollate_batch
from monai.inferers import sliding_window_inference

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import cpu_name  # noqa: E402
from medseg.data.transforms import Preprocessing  # noqa: E402
from medseg.inference import InferenceOptions, Predictor, load_trained_model, segment_scans  # noqa: E402
from medseg.precision import inference_precision  # noqa: E402
from medseg.recipe import Recipe, Window  # noqa: E402
from medseg.model.networks import network_for  # noqa: E402

SPLEEN_NETWORK = {"channels": [16, 32, 64, 128, 256], "strides": [2, 2, 2, 2], "num_res_units": 2, "norm": "batch"}
PATCH, SPACING, CT_WINDOW = (96, 96, 96), (1.5, 1.5, 2.0), (-57.0, 164.0)



def write_checkpoints(folder: Path) -> tuple[Path, Path, Recipe]:
    """Write one random network as a medseg checkpoint and as the tutorial's plain state dict."""
    recipe = Recipe("UNet", SPLEEN_NETWORK, ("CT",), ("background", "organ", "lesion"), PATCH,
                    Preprocessing(SPACING, normalization="ct", ct_window=CT_WINDOW), precision="16-mixed", window=Window(overlap=0.5))
    torch.manual_seed(0)
    network = network_for(recipe).eval()
    checkpoint, weights = folder / "medseg.ckpt", folder / "best_metric_model.pth"
    torch.save({"state_dict": {f"net.{k}": v for k, v in network.state_dict().items()}, "medseg": recipe.to_dict()}, checkpoint)
    torch.save(network.state_dict(), weights)
    return checkpoint, weights, recipe


def tutorial_transforms() -> tuple[T.Compose, Callable[[T.Compose, Path], T.Compose]]:
    """Return the tutorial's test-set preprocessing and a builder of its post-processing writing to a folder."""
    low, high = CT_WINDOW
    test_org_transforms = T.Compose([
        T.LoadImaged(keys="image"),
        T.EnsureChannelFirstd(keys="image"),
        T.Orientationd(keys=["image"], axcodes="RAS"),
        T.Spacingd(keys=["image"], pixdim=SPACING, mode="bilinear"),
        T.ScaleIntensityRanged(keys=["image"], a_min=low, a_max=high, b_min=0.0, b_max=1.0, clip=True),
        T.CropForegroundd(keys=["image"], source_key="image"),
    ])

    def post_transforms(pre: T.Compose, output: Path) -> T.Compose:
        return T.Compose([
            T.Invertd(keys="pred", transform=pre, orig_keys="image", nearest_interp=False, to_tensor=True),
            T.AsDiscreted(keys="pred", argmax=True),
            T.SaveImaged(keys="pred", output_dir=str(output), output_postfix="seg", resample=False, separate_folder=False, print_log=False),
        ])

    return test_org_transforms, post_transforms


def tutorial_run(weights: Path, scans: list[Path], output: Path, device: str) -> None:
    """MONAI's spleen tutorial test-set loop."""
    pre, post_builder = tutorial_transforms()
    post = post_builder(pre, output)
    model = network_for(Recipe("UNet", SPLEEN_NETWORK, ("CT",), ("background", "organ", "lesion"), PATCH))
    model.load_state_dict(torch.load(weights, weights_only=True))
    model.to(device).eval()
    loader = DataLoader(Dataset([{"image": str(scan)} for scan in scans], pre), batch_size=1, num_workers=4)
    with torch.no_grad():
        for test_data in loader:
            test_data["pred"] = sliding_window_inference(test_data["image"].to(device), PATCH, 4, model)
            [post(i) for i in decollate_batch(test_data)]


def seconds(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(Path(tempfile.gettempdir()) / "medseg-training-benchmark"), help="scans from training_benchmark.py")
    parser.add_argument("--scans", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N: where both recipes run their windows")
    parser.add_argument("--size", nargs=3, type=int, default=None, metavar=("X", "Y", "Z"),
                        help="time the window stage on a random volume of this size instead of the first scan")
    parser.add_argument("--output", default=None, help="write OUTPUT.json and OUTPUT.md")
    args = parser.parse_args()
    on_gpu = args.device.startswith("cuda")
    warnings.filterwarnings("ignore")
    from benchmarks.training_benchmark import write_dataset

    root = write_dataset(Path(args.data))
    scans = sorted((root / "imagesTr").glob("*.nii.gz"))[: args.scans]
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="medseg-infer-bench-") as tmp:
        tmp = Path(tmp)
        checkpoint, weights, recipe = write_checkpoints(tmp)
        folder = tmp / "scans"
        folder.mkdir()
        for scan in scans:
            (folder / scan.name).symlink_to(scan)
        same = InferenceOptions(overlap=0.25, device=args.device)
        end_to_end = {
            "tutorial": lambda: tutorial_run(weights, scans, tmp / "tutorial", args.device),
            "medseg-same-overlap": lambda: segment_scans(checkpoint, folder, tmp / "medseg-same", same, overwrite=True),
            "medseg-defaults": lambda: segment_scans(checkpoint, folder, tmp / "medseg-defaults", InferenceOptions(device=args.device), overwrite=True),
        }
        # the window stage alone, on the first scan as both recipes preprocess it (or a random volume of --size)
        if args.size:
            image = torch.rand(1, 1, *args.size, generator=torch.Generator().manual_seed(0))
        else:
            image = tutorial_transforms()[0]({"image": str(scans[0])})["image"].as_tensor()[None]
        network = load_trained_model(checkpoint).network.to(args.device)
        predictor = Predictor(load_trained_model(checkpoint), same)
        # the tutorial's output stays where its input is (on the GPU: moved back to the CPU, as medseg's is)
        windows = {
            "tutorial": lambda: torch.no_grad()(sliding_window_inference)(image.to(args.device), PATCH, 4, network).cpu(),
            "medseg-same-overlap": lambda: predictor.probabilities(image),
        }
        if on_gpu:
            fp32 = Predictor(load_trained_model(checkpoint), InferenceOptions(overlap=0.25, device=args.device, precision="32-true"))
            windows["tutorial-stitched-on-cpu"] = lambda: torch.no_grad()(sliding_window_inference)(image, PATCH, 4, network, sw_device=args.device, device="cpu")
            windows["medseg-fp32-same-overlap"] = lambda: fp32.probabilities(image)
        timings: dict[str, dict[str, list[float]]] = {"end_to_end": {k: [] for k in end_to_end}, "window_stage": {k: [] for k in windows}}
        for runs in (end_to_end, windows):
            for run in runs.values():
                run()  # warm-up
        for repeat in range(args.repeats):
            for stage, runs in (("end_to_end", end_to_end), ("window_stage", windows)):
                for name, run in runs.items():
                    timings[stage][name].append(seconds(run))
            print(f"repeat {repeat}: " + json.dumps({s: {k: round(v[-1], 2) for k, v in t.items()} for s, t in timings.items()}), flush=True)
    best = {stage: {name: round(min(values), 3) for name, values in runs.items()} for stage, runs in timings.items()}
    report = {
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "device": torch.cuda.get_device_name(args.device) if on_gpu else cpu_name(),
        "cpu_threads": torch.get_num_threads(),
        "window_stage_volume": list(image.shape[2:]),
        "load_average_before_after": [round(v, 2) for v in (*load_before, *os.getloadavg())],
        "versions": {"torch": torch.__version__, "cuda": torch.version.cuda, "monai": monai.__version__},
        "scans": [f"{s.name} 192x192x112 at 0.8x0.8x2.5 mm" for s in scans],
        "network": {"name": "UNet", "classes": 3, **SPLEEN_NETWORK},
        "medseg_default_precision": inference_precision(recipe.precision, torch.device(args.device).type),
        "seconds_fastest": best,
        "seconds_all": {s: {k: [round(x, 3) for x in v] for k, v in t.items()} for s, t in timings.items()},
        "speedup_vs_tutorial": {
            stage: {name: round(runs["tutorial"] / value, 3) for name, value in runs.items() if name != "tutorial"} for stage, runs in best.items()
        },
    }
    print(json.dumps(report["speedup_vs_tutorial"]))
    if args.output:
        write_report(report, Path(args.output))


def write_report(report: dict, out: Path) -> None:
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    rows = []
    for stage, runs in report["seconds_fastest"].items():
        for name, value in runs.items():
            ratio = report["speedup_vs_tutorial"][stage].get(name, 1.0)
            rows.append(f"| {stage.replace('_', ' ')} | {name} | {value} | {ratio} |")
    out.with_suffix(".md").write_text(
        f"# Whole-scan inference against MONAI's spleen tutorial recipe, {report['device']}\n\n"
        f"Command: `{report['command']}`  \n"
        f"Date (UTC): {report['date_utc']}; torch {report['versions']['torch']}, CUDA {report['versions'].get('cuda')}, MONAI {report['versions']['monai']}; "
        f"{report['cpu_threads']} CPU threads; load average (1, 5, 15 min) before and after: {report['load_average_before_after']}.  \n"
        f"{len(report['scans'])} CT-like scans of 192x192x112 voxels; UNet {SPLEEN_NETWORK}, 3 classes, window {list(PATCH)}, "
        f"window batch 4; medseg's default precision here: {report['medseg_default_precision']}. End to end = load the weights, "
        "read, preprocess, sliding windows, invert, write every scan. Window stage on a volume of "
        f"{report.get('window_stage_volume')} voxels. Fastest of the interleaved repeats.\n\n"
        "| stage | run | seconds | speed-up vs tutorial |\n|---|---|---|---|\n" + "\n".join(rows) + "\n"
    )


if __name__ == "__main__":
    main()
