"""``python -m medseg.export``: write a trained model as one self-describing folder: ONNX, TorchScript, the recipe, the
postprocessing and a MONAI bundle."""

from __future__ import annotations

from typing import Sequence

from medseg.command_line import CommandParser
from medseg.errors import run_command
from medseg.option_values import CHECK_TOLERANCE


def export(argv: Sequence[str]) -> None:
    """Export the models the options name and print what was written."""
    parser = CommandParser("python -m medseg.export", __doc__.split(":", 1)[1].strip())
    parser.add_argument("--checkpoint", required=True, nargs="+",
                        help="medseg .ckpt, several (exported as one ensemble: the mean of their logits), or run folders and a cross-validation "
                             "folder (their best-*.ckpt, else last.ckpt), as medseg.infer takes them")
    parser.add_argument("-o", "--output", required=True, help="the export folder to write (written beside under a temporary name, then renamed)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing export folder (refused otherwise)")
    parser.add_argument("--no_postprocessing", action="store_true", help="leave out a postprocessing.json of a --checkpoint folder")
    parser.add_argument("--check", default=None, metavar="LABELLED",
                        help="a dataset with labels (folder or dataset.json) to segment with every runtime and precision this machine offers: "
                             "Dice per class against the truth and against fp32 PyTorch, speed; writes check.md, check.json and check.png "
                             "and records the fastest way within --tolerance as the export's default (without it: torch at the trained precision)")
    parser.add_argument("--tolerance", type=float, default=CHECK_TOLERANCE,
                        help=f"the mean Dice a class may lose against fp32 PyTorch before a way is refused as the default (default: {CHECK_TOLERANCE})")
    parser.add_argument("--device", default=None, help="where --check runs: cpu, cuda or cuda:N (default: the GPU if there is one)")
    args = parser.parse_args(argv)
    # torch, MONAI and the exporters load here, so that --help answers without them
    from medseg.exporting.writer import export_model

    result = export_model(args.checkpoint, args.output, postprocessing=not args.no_postprocessing, overwrite=args.overwrite)
    manifest = result.manifest
    if args.check:
        from medseg.exporting.check import check_export

        checked = check_export(result.folder, args.check, args.tolerance, args.device)
        print(checked.table())
        for scores in checked.scores:
            if scores.refused:
                print(f"{scores.candidate.name} is not the default: {scores.refused}")
        print(f"default: {checked.default.name} (the fastest within the tolerance); check.md, check.json, check.png in {result.folder}")
    print(f"exported {len(manifest['models'])} model(s) to {result.folder}: ONNX (opset {manifest['onnx_opset']}), TorchScript, "
          f"recipe, {'postprocessing, ' if 'postprocessing.json' in manifest['files'] else ''}MONAI bundle configs")
    print(f"run it: python -m medseg.infer --checkpoint {result.folder} -i SCANS -o OUT [--runtime onnxruntime]")
    print(f"or with MONAI: python -m monai.bundle run --config_file {result.folder}/configs/inference.json --dataset_dir SCANS --output_dir OUT")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: return the exit code: 0, or 1 after a one-line error (``run_command``)."""
    return run_command(export, argv)
