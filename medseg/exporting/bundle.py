"""The MONAI bundle configs of an exported model: its recipe's preprocessing, windows and postprocessing written as
MONAI transform configs, so that MONAI's own runner (``python -m monai.bundle run``), MONAI Deploy and MONAI Label
segment scans as ``medseg.infer`` does (docs/how-to/export.md lists where they differ, and why)."""

from __future__ import annotations

from typing import Any

import monai
import numpy as np
import torch

import medseg
from medseg.data.transforms import Preprocessing
from medseg.inference.postprocessing import Postprocessing
from medseg.recipe import Recipe

__all__ = ["inference_config", "metadata"]

IMAGE, PRED = "image", "pred"


def preprocessing_configs(prep: Preprocessing) -> list[dict[str, Any]]:
    """Return ``medseg.data.transforms.preprocessing_transforms`` (image only) as MONAI transform configs."""
    steps: list[dict[str, Any]] = [
        {"_target_": "LoadImaged", "keys": IMAGE, "reader": "NibabelReader", "image_only": True},
        {"_target_": "EnsureChannelFirstd", "keys": IMAGE},
        {"_target_": "EnsureTyped", "keys": IMAGE, "dtype": "$torch.float32", "track_meta": True},
        {"_target_": "Orientationd", "keys": IMAGE, "axcodes": prep.axcodes, "labels": None},
    ]
    if prep.spacing is not None:
        steps.append({"_target_": "Spacingd", "keys": IMAGE, "pixdim": list(prep.spacing), "mode": "bilinear", "dtype": "$torch.float32"})
    if prep.crop_foreground:
        steps.append({
            "_target_": "CropForegroundd", "keys": IMAGE, "source_key": IMAGE, "select_fn": f"$lambda x: x > {prep.foreground_threshold!r}",
            "allow_smaller": True, "start_coord_key": None, "end_coord_key": None,
        })
    low, high = prep.ct_window
    if prep.normalization == "ct":
        steps.append({"_target_": "ScaleIntensityRanged", "keys": IMAGE, "a_min": low, "a_max": high, "b_min": 0.0, "b_max": 1.0, "clip": True})
    elif prep.normalization == "ct_zscore":
        steps.append({"_target_": "ScaleIntensityRanged", "keys": IMAGE, "a_min": low, "a_max": high, "b_min": low, "b_max": high, "clip": True})
        steps.append({"_target_": "NormalizeIntensityd", "keys": IMAGE, "subtrahend": prep.ct_mean, "divisor": prep.ct_std})
    elif prep.normalization == "zscore":
        steps.append({"_target_": "NormalizeIntensityd", "keys": IMAGE, "nonzero": True, "channel_wise": True})
    return steps


def postprocessing_configs(class_names: tuple[str, ...], postprocessing: Postprocessing | None) -> list[dict[str, Any]]:
    """Return softmax, inversion onto the scan's grid, argmax, the chosen largest-component steps and the NIfTI writer."""
    steps: list[dict[str, Any]] = [
        {"_target_": "Activationsd", "keys": PRED, "softmax": True},
        # as medseg.inference.scan_grid: only the foreground is inverted, and background is what it leaves on the scan's
        # grid; inverting background too would pad it with zeros where the crop cut, and foreground would win there
        {"_target_": "Lambdad", "keys": PRED, "func": "$lambda p: p[1:]"},
        {"_target_": "Invertd", "keys": PRED, "transform": "@preprocessing", "orig_keys": IMAGE, "nearest_interp": False, "to_tensor": True},
        {"_target_": "Lambdad", "keys": PRED, "func": "$lambda p: torch.cat([1.0 - p.sum(dim=0, keepdim=True), p])"},
        {"_target_": "AsDiscreted", "keys": PRED, "argmax": True},
    ]
    if postprocessing is not None and postprocessing.foreground_largest_component:
        steps.append({"_target_": "KeepLargestConnectedComponentd", "keys": PRED, "applied_labels": list(range(1, len(class_names))),
                      "is_onehot": False, "independent": False})
    if postprocessing is not None and postprocessing.largest_component_classes:
        steps.append({"_target_": "KeepLargestConnectedComponentd", "keys": PRED, "is_onehot": False, "independent": True,
                      "applied_labels": [class_names.index(name) for name in postprocessing.largest_component_classes]})
    dtype = "uint8" if len(class_names) <= 256 else "uint16"
    steps.append({"_target_": "SaveImaged", "keys": PRED, "output_dir": "@output_dir", "output_postfix": "", "output_ext": ".nii.gz",
                  "separate_folder": False, "resample": False, "output_dtype": f"$numpy.{dtype}", "print_log": False})
    return steps


def scans_expression(channels: int) -> str:
    """Return the config expression listing ``dataset_dir``'s cases: every NIfTI file, or for several channels every
    ``<case>_0000.nii.gz`` with its other channels (nnU-Net's names, as ``medseg.infer`` reads a folder)."""
    if channels == 1:
        return "$[{'image': path} for path in sorted(glob.glob(@dataset_dir + '/*.nii*'))]"
    suffix = "_0000.nii.gz"
    return (f"$[{{'image': [path[:-{len(suffix)}] + f'_{{c:04d}}.nii.gz' for c in range({channels})]}} "
            f"for path in sorted(glob.glob(@dataset_dir + '/*{suffix}'))]")


def inference_config(recipe: Recipe, postprocessing: Postprocessing | None, bundle_root: str) -> dict[str, Any]:
    """Return ``configs/inference.json``: every ``*.nii``/``*.nii.gz`` scan of ``dataset_dir`` segmented into ``output_dir``
    as ``<case>.nii.gz``, with the network ``models/model.ts`` (TorchScript, as MONAI bundles load it).

    A plain loop stands in for MONAI's ``SupervisedEvaluator``, which needs pytorch-ignite.
    ``bundle_root`` is where the folder was written; a moved folder runs with ``--bundle_root NEW_PLACE``.
    """
    window = recipe.window
    return {
        "imports": ["$import glob", "$import numpy", "$import torch"],
        "bundle_root": bundle_root,
        "dataset_dir": "$@bundle_root + '/scans'",
        "output_dir": "$@bundle_root + '/eval'",
        "device": "$torch.device('cuda' if torch.cuda.is_available() else 'cpu')",
        "network": "$torch.jit.load(@bundle_root + '/models/model.ts', map_location=@device).eval()",
        "scans": scans_expression(recipe.in_channels),
        "preprocessing": {"_target_": "Compose", "transforms": preprocessing_configs(recipe.preprocessing)},
        "dataset": {"_target_": "Dataset", "data": "@scans", "transform": "@preprocessing"},
        "inferer": {
            "_target_": "SlidingWindowInferer", "roi_size": list(recipe.patch_size), "sw_batch_size": window.batch_size,
            "overlap": window.overlap, "mode": "gaussian" if window.gaussian else "constant", "sigma_scale": 0.125,
        },
        "postprocessing": {"_target_": "Compose", "transforms": postprocessing_configs(recipe.class_names, postprocessing)},
        "segment": f"$lambda case: @postprocessing(dict(case, {PRED}=@inferer(case['{IMAGE}'][None].to(@device), @network)[0].cpu()))",
        "initialize": ["$torch.set_grad_enabled(False)"],
        "run": ["$[@segment(case) for case in @dataset]"],
    }


def metadata(recipe: Recipe, description: str) -> dict[str, Any]:
    """Return ``configs/metadata.json`` in MONAI's bundle metadata schema: versions, and the network's input and output."""
    kind = "hounsfield" if recipe.preprocessing.normalization in ("ct", "ct_zscore") else "magnitude"
    return {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json",
        "version": medseg.__version__,
        "changelog": {medseg.__version__: "exported by medseg"},
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__,
        "required_packages_version": {"nibabel": __import__("nibabel").__version__},
        "name": f"medseg {recipe.network}",
        "task": "segmentation of " + ", ".join(recipe.class_names[1:]),
        "description": description,
        "authors": "medseg",
        "copyright": "see the training data's licence",
        "network_data_format": {
            "inputs": {IMAGE: {
                "type": "image", "format": kind, "modality": ", ".join(recipe.channel_names), "num_channels": recipe.in_channels,
                "spatial_shape": list(recipe.patch_size), "dtype": "float32", "value_range": [], "is_patch_data": True,
                "channel_def": {str(i): name for i, name in enumerate(recipe.channel_names)},
            }},
            "outputs": {PRED: {
                "type": "image", "format": "segmentation", "num_channels": recipe.out_channels, "spatial_shape": list(recipe.patch_size),
                "dtype": "float32", "value_range": [], "is_patch_data": True,
                "channel_def": {str(i): name for i, name in enumerate(recipe.class_names)},
            }},
        },
    }
