"""Export a model directory to ONNX (for ONNX Runtime, and for `clippy-rt build`).

    clippy-rt export MODEL_DIR --out DIR [--fp16] [--int8] [--openvino-int8 [--calibration DIR]]
        [--opset N] [--check-sizes 224,448]

Writes a self-contained directory (config, tokenizer, image.onnx, text.onnx, seg_head.onnx,
manifest.json; with --fp16 also image.fp16.onnx and text.fp16.onnx; with --int8 also
image.int8.onnx and text.int8.onnx, int8 weight products for the CPU; with --openvino-int8
also image.int8.ov.xml and text.int8.ov.xml (+ .bin), NNCF-calibrated int8 graphs for the
openvino backend), then prints a parity
table: torch float32 against ONNX Runtime CPU on random inputs at each size.
Load it with clippy_rt.load(DIR, backend="onnxruntime"[, precision="fp16" | "int8"]).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .common import int_list



def add_arguments(parser) -> None:
    from clippy_rt.export.onnx import DEFAULT_OPSET, MAX_OPSET, MIN_OPSET
    from clippy_rt.datasets.calibration import CALIBRATION_COUNT

    parser.add_argument("model", type=Path, help="model directory (config.json, weights.safetensors, tokenizer)")
    parser.add_argument("--out", type=Path, required=True, help="output ONNX directory")
    parser.add_argument("--fp16", action="store_true", help="also write float16 graphs (*.fp16.onnx)")
    parser.add_argument("--int8", action="store_true",
                        help="also write int8 graphs for the CPU (*.int8.onnx: int8 weights per output "
                             "channel, activations quantised per call)")
    parser.add_argument("--openvino-int8", action="store_true",
                        help="also write int8 graphs for the openvino backend (NNCF post-training "
                             "quantisation on calibration images; needs clippy-rt[openvino])")
    parser.add_argument("--calibration", type=Path, default=None, metavar="DIR",
                        help="calibration images for --openvino-int8 (default: generated scenes)")
    parser.add_argument("--calibration-count", type=int, default=CALIBRATION_COUNT, metavar="N",
                        help=f"calibration images (and prompts) used (default: {CALIBRATION_COUNT})")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                        help=f"ONNX opset, {MIN_OPSET}..{MAX_OPSET} (default: {DEFAULT_OPSET})")
    parser.add_argument("--check-sizes", type=int_list, default=None, metavar="S1,S2",
                        help="square image sizes for the parity check (default: the model's size and twice it)")
    parser.add_argument("--check-batches", type=int_list, default=[1, 2], metavar="B1,B2",
                        help="batch sizes for the parity check (default: 1,2)")
    parser.add_argument("--seg-head", action=argparse.BooleanOptionalAction, default=True,
                        help="write seg_head.onnx (default: yes)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")


def run(args) -> int:
    from clippy_rt.api import resolve_model_path
    from clippy_rt.export.onnx import PARITY_CLASSES, export_onnx, format_parity_table

    def log(message: str) -> None:
        # One write per line: print() writes the newline separately, and a signal between
        # the two would leave the final "clippy-rt: terminated" on this line.
        sys.stderr.write(f"export: {message}\n")
        sys.stderr.flush()

    from clippy_rt.datasets.calibration import calibration_set

    calibration = calibration_set(args.calibration, args.calibration_count) if args.openvino_int8 else None
    result = export_onnx(resolve_model_path(args.model), args.out, fp16=args.fp16, int8=args.int8,
                         openvino_int8=args.openvino_int8, calibration=calibration, opset=args.opset,
                         check_sizes=args.check_sizes,
                         check_batches=args.check_batches, seg_head=args.seg_head, overwrite=args.overwrite,
                         log=log)
    print(f"wrote {result.path} ({', '.join(result.manifest['precisions'])}; opset {result.manifest['opset']})")
    print()
    print("Parity, torch float32 vs ONNX Runtime CPU (random inputs; labels: argmax over "
          f"{len(PARITY_CLASSES)} prompts per patch):")
    print(format_parity_table(result.parity))
    if result.manifest["config"].get("random_weights"):
        print("\nwarning: this model has RANDOM weights; its outputs carry no meaning")
    return 0
