"""Build TensorRT engines from an ONNX directory (needs TensorRT and an NVIDIA GPU).

    clippy-rt build ONNX_DIR --out ENGINE_DIR [--fp16] [--batch 1,1,8] [--size 224,224,448]
        [--prompts 1,32,256] [--length 1,16,256] [--workspace MB] [--dla-core N --gpu-fallback]
        [--timing-cache PATH]

Ranges are MIN,OPT,MAX (one value fixes the dimension). --size applies to image height and
width alike. The engine directory is self-contained (config, tokenizer, image.plan,
text.plan, engine.json) and runs only with the TensorRT version and GPU model that built
it. Load it with clippy_rt.load(ENGINE_DIR, backend="tensorrt", device="cuda").
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path


def add_arguments(parser) -> None:
    parser.add_argument("onnx_dir", type=Path, help="ONNX directory written by `clippy-rt export`")
    parser.add_argument("--out", type=Path, required=True, help="output engine directory")
    parser.add_argument("--fp16", action="store_true",
                        help="float16 engines (strongly typed from the *.fp16.onnx graphs when present)")
    parser.add_argument("--batch", default="1,1,8", metavar="MIN,OPT,MAX", help="image batch range (default: 1,1,8)")
    parser.add_argument("--size", default=None, metavar="MIN,OPT,MAX",
                        help="image side range in pixels (default: S,S,2S for the model's size S)")
    parser.add_argument("--prompts", default="1,32,256", metavar="MIN,OPT,MAX",
                        help="prompt count range (default: 1,32,256)")
    parser.add_argument("--length", default=None, metavar="MIN,OPT,MAX",
                        help="prompt length range in tokens (default: 1,16,max_length)")
    parser.add_argument("--workspace", type=int, default=4096, metavar="MB", help="builder workspace (default: 4096)")
    parser.add_argument("--dla-core", type=int, default=None, metavar="N", help="build for DLA core N (Jetson)")
    parser.add_argument("--gpu-fallback", action="store_true", help="with --dla-core: run unsupported layers on the GPU")
    parser.add_argument("--timing-cache", type=Path, default=None, metavar="PATH",
                        help="timing cache file, read if present and updated (speeds up rebuilds)")
    parser.add_argument("--device", type=int, default=0, help="CUDA device index (default: 0)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")


def run(args) -> int:
    from clippy_rt.export.tensorrt import BuildSettings, Range, build_engines

    settings = BuildSettings(
        fp16=args.fp16, batch=Range.parse(args.batch, "batch"),
        size=Range.parse(args.size, "size") if args.size else None,
        prompts=Range.parse(args.prompts, "prompts"),
        length=Range.parse(args.length, "length") if args.length else None,
        workspace_mb=args.workspace, dla_core=args.dla_core, gpu_fallback=args.gpu_fallback,
        timing_cache=args.timing_cache, device=args.device)

    def log(message: str) -> None:
        # One write per line: print() writes the newline separately, and a signal between
        # the two would leave the final "clippy-rt: terminated" on this line.
        sys.stderr.write(f"build: {message}\n")
        sys.stderr.flush()

    out = build_engines(args.onnx_dir, args.out, settings, overwrite=args.overwrite, log=log,
                        rebuild_command=_command(args))
    print(f"wrote {out}")
    return 0


def _command(args) -> str:
    """The command line that rebuilds these engines (stored in engine.json)."""
    parts = ["clippy-rt", "build", str(args.onnx_dir), "--out", str(args.out), "--overwrite"]
    if args.fp16:
        parts.append("--fp16")
    for flag, value in (("--batch", args.batch), ("--size", args.size), ("--prompts", args.prompts),
                        ("--length", args.length), ("--workspace", args.workspace), ("--dla-core", args.dla_core),
                        ("--timing-cache", args.timing_cache)):
        if value is not None:
            parts += [flag, str(value)]
    if args.gpu_fallback:
        parts.append("--gpu-fallback")
    return " ".join(shlex.quote(p) for p in parts)
