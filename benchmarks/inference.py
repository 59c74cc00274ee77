"""Whole-scan inference end to end: medseg against MONAI's spleen tutorial test-set recipe, same scans, network and overlap.

On ``--scans`` CT-like scans of 192x192x112 voxels (``medseg.testing.write_ct_phantoms`` writes them) and one MONAI UNet
(configs/spleen_ct.yaml's, 3 classes, random weights), each run reads the weights, then every scan, and writes
every label map, timed in one process:
  * ``tutorial``: spleen_segmentation_3d(_lightning).ipynb's test-set recipe: LoadImaged, EnsureChannelFirstd,
    Orientationd, Spacingd, ScaleIntensityRanged, CropForegroundd (DataLoader, 4 workers), then
    ``sliding_window_inference(x, (96, 96, 96), 4, net)`` (overlap 0.25, constant blending), then Invertd,
    AsDiscreted(argmax=True) and SaveImaged;
  * ``medseg-same-overlap``: ``medseg.inference.segment_scans`` (what ``python -m medseg.infer`` runs) at overlap 0.25;
  * ``medseg-defaults``: the same with every default (the recipe's overlap 0.5, precision from
    ``medseg.precision.inference_precision``: bf16 on CPUs with native bf16, else fp32);
  * ``medseg-defaults-fp32``: the defaults at fp32, the path of a CPU without native bf16.
``--extra-scan`` adds scans of your own (nilearn's MNI152 T1 template, say: 197x233x189 at 1 mm, a head that fills
its grid) to the CT-like ones. Where the time goes: each recipe's stages (reading, preprocessing, windows,
inversion, writing) are also timed one after another on every scan, the fastest of the repeats kept; medseg's
end-to-end run overlaps reading and writing with the windows, the tutorial's starts 4 loader workers.
The window stage alone is also timed on the largest scan's preprocessed volume (or a random one of ``--size``):
the tutorial's call against medseg's ``Predictor.probabilities`` at overlap 0.25, with channels-last weights (medseg's
layout) and with channels-first ones. With ``--device cuda`` both
recipes run their windows on the GPU (the tutorial moves its input there, as its notebook does); the window stage
then also times MONAI's call with the output stitched on the CPU (``device="cpu"``), and medseg at fp32, since
medseg's default there is the trained precision (fp16). medseg's GPU windows run with channels-last weights and cuDNN
autotuning; benchmarks/results/inference/inference_cuda_autotuned.md measured each against neither, with this script's
version of the commit that added it. Runs are interleaved, ``--repeats`` times after one
warm-up each, so a busy machine slows all alike; the fastest of each is kept.

    python -m benchmarks.inference --output benchmarks/results/inference/inference_cpu
    python -m benchmarks.inference --extra-scan mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz --output benchmarks/results/inference/inference_cpu_stages
    python -m benchmarks.inference --device cuda --size 512 512 256 --output benchmarks/results/inference/inference_cuda
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable

import nibabel as nib
import torch
from monai import transforms as T
from monai.data import DataLoader, Dataset, decollate_batch, list_data_collate
from monai.inferers import sliding_window_inference

from benchmarks.common import add_output_option, cpu_name, write_results
from medseg.data.formats import Case
from medseg.data.transforms import Preprocessing
from medseg.inference import InferenceOptions, Predictor, load_trained_model, segment_scans
from medseg.inference.predictor import ScanInput
from medseg.inference.runner import case_outputs, write_prediction
from medseg.io.nifti import open_scan
from medseg.model.networks import network_for
from medseg.precision import cpu_has_native_bf16, inference_precision
from medseg.recipe import Recipe, Window
from medseg.testing import write_ct_phantoms

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


STAGES = ("reading", "preprocessing", "windows", "inversion", "writing")


class StageClock:
    """Sums the wall time of each named stage over the scans of one pass."""

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(STAGES, 0.0)

    def __call__(self, stage: str, run: Callable[[], object]) -> object:
        start = time.perf_counter()
        result = run()
        self.seconds[stage] += time.perf_counter() - start
        return result


def tutorial_stages(weights: Path, scans: list[Path], output: Path, device: str) -> dict[str, float]:
    """Return the seconds of each stage of the tutorial's recipe over the scans, one scan and stage after another."""
    pre, post_builder = tutorial_transforms()
    post = post_builder(pre, output)
    read, preprocess = T.Compose(pre.transforms[:2]), T.Compose(pre.transforms[2:])
    invert, write = T.Compose(post.transforms[:2]), post.transforms[2]
    model = network_for(Recipe("UNet", SPLEEN_NETWORK, ("CT",), ("background", "organ", "lesion"), PATCH))
    model.load_state_dict(torch.load(weights, weights_only=True))
    model.to(device).eval()
    clock = StageClock()
    with torch.no_grad():
        for scan in scans:
            data = clock("preprocessing", lambda: preprocess(clock("reading", lambda: read({"image": str(scan)}))))
            batch = list_data_collate([data])  # as the tutorial's DataLoader batches it
            batch["pred"] = clock("windows", lambda: sliding_window_inference(batch["image"].to(device), PATCH, 4, model))
            clock("writing", lambda: write(clock("inversion", lambda: invert(decollate_batch(batch)[0]))))
    clock.seconds["preprocessing"] -= clock.seconds["reading"]
    clock.seconds["writing"] -= clock.seconds["inversion"]
    return clock.seconds


def medseg_stages(checkpoint: Path, scans: list[Path], output: Path, options: InferenceOptions) -> dict[str, float]:
    """Return the seconds of each stage of ``segment_scans``'s work over the scans, one scan and stage after another
    (inversion: ``Predictor.predict`` less its windows, which it runs again)."""
    predictor = Predictor(load_trained_model(checkpoint), options)
    read, preprocess = T.Compose(predictor.preprocess.transforms[:2]), T.Compose(predictor.preprocess.transforms[2:])
    clock = StageClock()
    for scan in scans:
        case = Case(scan.name.removesuffix(".nii.gz"), (scan,))
        header = clock("reading", lambda: open_scan(case.images, 1))
        data = clock("preprocessing", lambda: preprocess(clock("reading", lambda: read({"image": str(scan)}))))
        scan_input = ScanInput(data, header)
        with torch.inference_mode():
            clock("windows", lambda: predictor._each_slab(data["image"].as_tensor()[None], lambda: lambda first_row, slab: None))
        prediction = clock("inversion", lambda: predictor.predict(scan_input))
        clock("writing", lambda: write_prediction(prediction, case, case_outputs(case, output, "nifti")))
    clock.seconds["preprocessing"] -= clock.seconds["reading"]
    clock.seconds["inversion"] -= clock.seconds["windows"]
    return clock.seconds


def seconds(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(Path(tempfile.gettempdir()) / "medseg-training-benchmark"), help="scans from benchmarks.training (medseg.testing.write_ct_phantoms)")
    parser.add_argument("--scans", type=int, default=3)
    parser.add_argument("--extra-scan", type=Path, action="append", default=[], help="a scan of your own to add (repeatable)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N: where both recipes run their windows")
    parser.add_argument("--size", nargs=3, type=int, default=None, metavar=("X", "Y", "Z"),
                        help="time the window stage on a random volume of this size instead of the first scan")
    add_output_option(parser)
    args = parser.parse_args()
    on_gpu = args.device.startswith("cuda")
    warnings.filterwarnings("ignore")
    root = write_ct_phantoms(Path(args.data))
    scans = sorted((root / "imagesTr").glob("*.nii.gz"))[: args.scans] + [path.resolve() for path in args.extra_scan]
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="medseg-infer-bench-") as tmp:
        tmp = Path(tmp)
        checkpoint, weights, recipe = write_checkpoints(tmp)
        folder = tmp / "scans"
        folder.mkdir()
        for scan in scans:
            (folder / scan.name).symlink_to(scan)
        same = InferenceOptions(window={"overlap": 0.25}, device=args.device)
        defaults, defaults_fp32 = InferenceOptions(device=args.device), InferenceOptions(device=args.device, precision="32-true")
        end_to_end = {
            "tutorial": lambda: tutorial_run(weights, scans, tmp / "tutorial", args.device),
            "medseg-same-overlap": lambda: segment_scans(checkpoint, folder, tmp / "medseg-same", same, overwrite=True),
            "medseg-defaults": lambda: segment_scans(checkpoint, folder, tmp / "medseg-defaults", defaults, overwrite=True),
            "medseg-defaults-fp32": lambda: segment_scans(checkpoint, folder, tmp / "medseg-fp32", defaults_fp32, overwrite=True),
        }
        stages = {
            "tutorial": lambda: tutorial_stages(weights, scans, tmp / "tutorial-stages", args.device),
            "medseg-defaults": lambda: medseg_stages(checkpoint, scans, tmp / "medseg-stages", defaults),
            "medseg-defaults-fp32": lambda: medseg_stages(checkpoint, scans, tmp / "medseg-stages-fp32", defaults_fp32),
        }
        # the window stage alone, on the largest scan as both recipes preprocess it (or a random volume of --size)
        if args.size:
            image = torch.rand(1, 1, *args.size, generator=torch.Generator().manual_seed(0))
        else:
            image = max((tutorial_transforms()[0]({"image": str(scan)})["image"].as_tensor()[None] for scan in scans), key=torch.numel)
        network = load_trained_model(checkpoint).network.to(args.device)
        predictor = Predictor(load_trained_model(checkpoint), same)
        channels_first = Predictor(load_trained_model(checkpoint), same)
        channels_first.models[0].network.to(memory_format=torch.contiguous_format)  # the layout medseg ran on a CPU before
        # the tutorial's output stays where its input is (on the GPU: moved back to the CPU, as medseg's is)
        windows = {
            "tutorial": lambda: torch.no_grad()(sliding_window_inference)(image.to(args.device), PATCH, 4, network).cpu(),
            "medseg-same-overlap": lambda: predictor.probabilities(image),
            "medseg-same-overlap-channels-first": lambda: channels_first.probabilities(image),
        }
        if on_gpu:
            fp32 = Predictor(load_trained_model(checkpoint), InferenceOptions(window={"overlap": 0.25}, device=args.device, precision="32-true"))
            windows["tutorial-stitched-on-cpu"] = lambda: torch.no_grad()(sliding_window_inference)(image, PATCH, 4, network, sw_device=args.device, device="cpu")
            windows["medseg-fp32-same-overlap"] = lambda: fp32.probabilities(image)
        timings: dict[str, dict[str, list[float]]] = {"end_to_end": {k: [] for k in end_to_end}, "window_stage": {k: [] for k in windows}}
        stage_timings: dict[str, list[dict[str, float]]] = {name: [] for name in stages}
        for runs in (end_to_end, windows):
            for run in runs.values():
                run()  # warm-up
        for repeat in range(args.repeats):
            for stage, runs in (("end_to_end", end_to_end), ("window_stage", windows)):
                for name, run in runs.items():
                    timings[stage][name].append(seconds(run))
            for name, run in stages.items():
                stage_timings[name].append(run())
            print(f"repeat {repeat}: " + json.dumps({s: {k: round(v[-1], 2) for k, v in t.items()} for s, t in timings.items()}), flush=True)
    best = {stage: {name: round(min(values), 3) for name, values in runs.items()} for stage, runs in timings.items()}
    best_stages = {name: {stage: round(min(run[stage] for run in runs), 3) for stage in STAGES} for name, runs in stage_timings.items()}
    report = {
        "device": torch.cuda.get_device_name(args.device) if on_gpu else cpu_name(),
        "cpu_threads": torch.get_num_threads(),
        "window_stage_volume": list(image.shape[2:]),
        "load_average_before_after": [round(v, 2) for v in (*load_before, *os.getloadavg())],
        "scans": [scan_description(scan) for scan in scans],
        "network": {"name": "UNet", "classes": 3, **SPLEEN_NETWORK},
        "medseg_default_precision": inference_precision(recipe.precision, torch.device(args.device).type),
        "native_bf16": cpu_has_native_bf16(),
        "seconds_fastest": best,
        "seconds_all": {s: {k: [round(x, 3) for x in v] for k, v in t.items()} for s, t in timings.items()},
        "stage_seconds_fastest": best_stages,
        "speedup_vs_tutorial": {
            stage: {name: round(runs["tutorial"] / value, 3) for name, value in runs.items() if name != "tutorial"} for stage, runs in best.items()
        },
    }
    print(json.dumps(report["speedup_vs_tutorial"]))
    write_results(args.output, f"Whole-scan inference against MONAI's spleen tutorial recipe, {report['device']}", report, markdown(report))


def scan_description(path: Path) -> str:
    """Return a scan's file name, voxel grid and spacing, as the report lists them."""
    image = nib.load(path)
    return f"{path.name}: {'x'.join(map(str, image.shape[:3]))} at {'x'.join(f'{z:g}' for z in image.header.get_zooms()[:3])} mm"


def markdown(report: dict) -> str:
    """Return what ran, the end-to-end and window-stage table, and each stage's seconds per recipe."""
    rows = []
    for stage, runs in report["seconds_fastest"].items():
        for name, value in runs.items():
            ratio = report["speedup_vs_tutorial"][stage].get(name, 1.0)
            rows.append(f"| {stage.replace('_', ' ')} | {name} | {value} | {ratio} |")
    stages = report["stage_seconds_fastest"]
    stage_rows = [f"| {stage} | " + " | ".join(str(runs[stage]) for runs in stages.values()) + " |" for stage in STAGES]
    stage_rows.append("| sum | " + " | ".join(f"{sum(runs.values()):.3f}" for runs in stages.values()) + " |")
    return (
        f"{report['cpu_threads']} CPU threads; native bf16: {report['native_bf16']}; load average (1, 5, 15 min) before and after: "
        f"{report['load_average_before_after']}.  \n"
        f"Scans: {'; '.join(report['scans'])}. UNet {SPLEEN_NETWORK}, 3 classes, window {list(PATCH)}, "
        f"window batch 4; medseg's default precision here: {report['medseg_default_precision']}. End to end = load the weights, "
        "read, preprocess, sliding windows, invert, write every scan. Window stage on a volume of "
        f"{report.get('window_stage_volume')} voxels. Fastest of the interleaved repeats.\n\n"
        "| stage | run | seconds | speed-up vs tutorial |\n|---|---|---|---|\n" + "\n".join(rows) + "\n\n"
        "Where the time goes: each stage's seconds summed over the scans, run one after another (fastest of the repeats).\n\n"
        "| stage | " + " | ".join(stages) + " |\n" + "|---" * (len(stages) + 1) + "|\n" + "\n".join(stage_rows)
    )


if __name__ == "__main__":
    main()
