"""``python -m medseg.infer``: segment a NIfTI scan, a folder of NIfTI scans and DICOM series, or a dataset with a trained checkpoint."""

from __future__ import annotations

import argparse
from typing import Sequence

from medseg.command_line import CommandParser
from medseg.errors import run_command
from medseg.option_values import OUTPUT_FORMATS, PRECISIONS, RUNTIMES


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = CommandParser("python -m medseg.infer", "Segment a NIfTI scan, a folder of NIfTI scans and DICOM series, or a dataset file with a trained medseg checkpoint.")
    parser.add_argument("--checkpoint", required=True, nargs="+",
                        help="medseg .ckpt (weights-only; holds network and preprocessing); several, or run folders (their best-*.ckpt, else last.ckpt), "
                             "are ensembled: window logits averaged over the models, as nnU-Net averages folds; or one export folder (python -m medseg.export)")
    parser.add_argument("-i", "--input", required=True,
                        help="a .nii/.nii.gz scan; a folder of them and of DICOM series (each series a case, subfolders searched; "
                             'needs pip install "medseg[dicom]"); or a dataset (folder or dataset.json; its training cases)')
    parser.add_argument("-o", "--output", required=True,
                        help="folder for <case>.nii.gz label maps (and <case>.seg.dcm DICOM-SEGs), and recipe.json: the settings they were made with "
                             "and the cases made; one run at a time")
    parser.add_argument("--output_format", choices=OUTPUT_FORMATS, default="nifti", old=["--output-format"],
                        help="nifti: <case>.nii.gz; dicom-seg: <case>.seg.dcm referencing the DICOM series (DICOM inputs only); "
                             "both (NIfTI scans get their NIfTI only) (default: nifti)")
    # training's model.window.* less "model.", the recipe's window settings; None keeps the recipe's
    parser.add_argument("--window.overlap", dest="overlap", type=float, default=None, old=["--sw_overlap", "--overlap"],
                        help="window overlap in [0, 1) (default: the checkpoint's recipe, as validation used)")
    parser.add_argument("--window.gaussian", dest="gaussian", choices=("true", "false"), default=None, old=["--sw_gaussian"],
                        help="false: blend windows with equal weights instead of a Gaussian (default: the recipe's blending)")
    parser.rename("--no-gaussian", "--window.gaussian", "false")
    parser.add_argument("--tta", action="store_true", help="average over the 8 flips of each window (8x slower)")
    parser.add_argument("--window.batch_size", dest="batch_size", type=int, default=None, old=["--sw_batch_size", "--sw-batch-size"],
                        help="windows per forward pass (default: the recipe's, planned for the GPU during training; halved on out-of-memory)")
    parser.add_argument("--precision", choices=PRECISIONS, default=None, help="default: the precision training ran at, where this device supports it (bf16 on a CPU only with native bf16)")
    parser.add_argument("--runtime", choices=RUNTIMES, default=None,
                        help="what runs the network's windows; onnxruntime and openvino run an export folder's ONNX model "
                             '(python -m medseg.export; pip install "medseg[export]" or "medseg[openvino]") (default: the export\'s recorded choice, else torch)')
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: the GPU if there is one)")
    parser.add_argument("--probabilities", action="store_true", help="also write per-class probabilities to OUTPUT/probabilities/")
    parser.add_argument("--statistics", action="store_true",
                        help="also write OUTPUT/statistics.json and statistics.csv: per scan and class, voxels, volume in mL and mean intensity "
                             "of the scan per channel (for the whole folder, updated as scans finish)")
    parser.add_argument("--preview", action="store_true",
                        help="also write OUTPUT/previews/<case>.png: axial, coronal and sagittal slices (radiological display) through the "
                             "largest structure, labels overlaid")
    parser.add_argument("--overwrite", action="store_true",
                        help="redo every scan, also in a folder made with other settings (refused otherwise); without it, scans whose outputs "
                             "(probabilities, statistics and preview included, when asked for) were all made with these settings are skipped")
    parser.add_argument("--no_postprocessing", action="store_true", old=["--no-postprocessing"],
                        help="ignore a postprocessing.json in a --checkpoint folder (python -m medseg.postprocess)")
    return parser.parse_args(argv)


def segment(argv: Sequence[str]) -> int:
    """Segment as the options say, print the summary, and return 0 when every scan was segmented or skipped, 1 otherwise."""
    args = parse_args(argv)
    # torch and MONAI load here, not at the top, so that --help answers without them
    from medseg.inference.predictor import InferenceOptions
    from medseg.inference.runner import segment_scans

    window = {"overlap": args.overlap, "gaussian": None if args.gaussian is None else args.gaussian == "true", "batch_size": args.batch_size}
    options = InferenceOptions(
        window={name: value for name, value in window.items() if value is not None},
        precision=args.precision,
        tta=args.tta,
        device=args.device,
        probabilities=args.probabilities,
        runtime=args.runtime,
    )
    summary = segment_scans(args.checkpoint, args.input, args.output, options, overwrite=args.overwrite, postprocessing=not args.no_postprocessing,
                            output_format=args.output_format, statistics=args.statistics, preview=args.preview)
    for line in summary.lines():
        print(line)
    return 1 if summary.failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: return the exit code: ``segment``'s, or 1 after a one-line error (``run_command``)."""
    return run_command(segment, argv)

