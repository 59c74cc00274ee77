"""``python -m medseg.export``: write a trained model as one self-describing folder: ONNX, TorchScript, the recipe, the
postprocessing and a MONAI bundle."""

from __future__ import annotations

from typing import Sequence

from medseg.command_line import CommandParser
from medseg.errors import run_command


def export(argv: Sequence[str]) -> None:
    """Export the models the options name and print what was written."""
    parser = CommandParser("python -m medseg.export", __doc__.split(":", 1)[1].strip())
    parser.add_argument("--checkpoint", required=True, nargs="+",
                        help="medseg .ckpt, several (exported as one ensemble: the mean of their logits), or run folders and a cross-validation "
                             "folder (their best-*.ckpt, else last.ckpt), as medseg.infer takes them")
    parser.add_argument("-o", "--output", required=True, help="the export folder to write (written beside under a temporary name, then renamed)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing export folder (refused otherwise)")
    parser.add_argument("--no_postprocessing", action="store_true", help="leave out a postprocessing.json of a --checkpoint folder")
    args = parser.parse_args(argv)
    # torch, MONAI and the exporters load here, so that --help answers without them
    from medseg.exporting.writer import export_model

    result = export_model(args.checkpoint, args.output, postprocessing=not args.no_postprocessing, overwrite=args.overwrite)
    manifest = result.manifest
    print(f"exported {len(manifest['models'])} model(s) to {result.folder}: ONNX (opset {manifest['onnx_opset']}), TorchScript, "
          f"recipe, {'postprocessing, ' if 'postprocessing.json' in manifest['files'] else ''}MONAI bundle configs")
    print(f"run it: python -m medseg.infer --checkpoint {result.folder} -i SCANS -o OUT [--runtime onnxruntime]")
    print(f"or with MONAI: python -m monai.bundle run --config_file {result.folder}/configs/inference.json --dataset_dir SCANS --output_dir OUT")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: return the exit code: 0, or 1 after a one-line error (``run_command``)."""
    return run_command(export, argv)
