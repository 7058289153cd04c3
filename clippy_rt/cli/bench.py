"""Measure latency and throughput of every backend and pipeline stage, side by side.

Give a model directory, an ONNX directory, a TensorRT engine directory, or --arch for
random weights (made in a temporary directory). Every list option takes comma-separated
values and the run covers their product:

  clippy-rt bench --arch tiny
  clippy-rt bench MODEL --backend torch,onnxruntime --batch 1,8 --size 224,448
  clippy-rt bench MODEL --engine-dir ENGINE_DIR --backend torch,tensorrt --device cuda --precision fp32,fp16
  clippy-rt bench ONNX_DIR --backend onnxruntime --json out.json
  clippy-rt bench MODEL --backend torch,onnxruntime,openvino --precision fp32,bf16,int8 --stage image,gemm

Stages: preprocess (PIL on the CPU vs the preprocess kernel), image (the image tower),
text (K prompts, cold = cache cleared every iteration, and cached), seg-head (reference
procedure / fused torch / Triton / native CUDA), end-to-end (Engine.segment on uint8
frames of --frame-size), stream (Engine.stream on --batch frames per call, CUDA graphs on
CUDA; not in the default set: ask for it with --stage stream), gemm (CPU only: one product of
the image tower's largest shape in each backend's runtime and precision; each image row's
GFLOP/s is then also given as a fraction of the fastest probe of its precision, the GEMM limit). Each configuration is warmed up for --warmup-ms, then timed for
at least --duration-s and --min-iters iterations, with device synchronisation (CUDA
events give GPU time; host wall time is reported apart). Percentiles are nearest-rank.

Ratios compare each row with its baseline: the same stage, device, batch, size and K on
--baseline (default torch:fp32) with the reference post-processing (PIL preprocessing,
cold text, reference seg head); the baseline runs even when not asked for, if the input
can run it (torch needs a MODEL directory). A configuration that cannot run here (no CUDA, no
TensorRT, no ONNX exporter, too little memory, an engine profile too small) is listed as
skipped with its reason and the rest goes on; --device cuda on a machine without CUDA
therefore skips every CUDA configuration. Exit status: 0 when something ran and nothing
failed, 1 when a configuration failed or none ran, 130 after Ctrl-C (what finished is
still printed and written).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from .common import int_list, progress, size_arg, str_list

DEFAULT_STAGES = "preprocess,image,text,seg-head,end-to-end,gemm"


def add_arguments(parser) -> None:
    parser.add_argument("model", nargs="?", default=None, metavar="MODEL",
                        help="model, ONNX or TensorRT engine directory, or 'demo'")
    parser.add_argument("--arch", default=None, choices=["clippy-b16", "tiny"],
                        help="benchmark random weights of this architecture instead of a directory")
    parser.add_argument("--onnx-dir", default=None, metavar="ONNX_DIR",
                        help="ONNX directory for the onnxruntime backend (default: export MODEL once per run)")
    parser.add_argument("--engine-dir", default=None, metavar="ENGINE_DIR",
                        help="TensorRT engine directory for the tensorrt backend, beside a MODEL")
    parser.add_argument("--backend", type=str_list, default=["torch"],
                        help="backends, from torch, onnxruntime, tensorrt, openvino (default: torch)")
    parser.add_argument("--precision", type=str_list, default=["fp32"],
                        help="precisions, from fp32, fp16, bf16, int8 (default: fp32); a backend that does "
                             "not serve one skips it with the reason")
    parser.add_argument("--device", type=str_list, default=["cpu"],
                        help="devices, cpu and/or cuda[:N] (default: cpu)")
    parser.add_argument("--batch", type=int_list, default=[1], help="batch sizes (default: 1)")
    parser.add_argument("--size", type=int_list, default=None,
                        help="square input sizes, multiples of the patch size (default: the model's)")
    parser.add_argument("--prompts", type=int_list, default=[21],
                        help="prompt counts K (default: 21, the VOC classes)")
    parser.add_argument("--stage", type=str_list, default=DEFAULT_STAGES.split(","),
                        help=f"stages (default: all: {DEFAULT_STAGES})")
    parser.add_argument("--frame-size", type=size_arg, default=(480, 640),
                        help="HxW of the uint8 frames for preprocess and end-to-end (default: 480x640)")
    parser.add_argument("--warmup-ms", type=float, default=200.0,
                        help="untimed warm-up per configuration, in ms (default: 200)")
    parser.add_argument("--duration-s", type=float, default=1.0,
                        help="minimum timed duration per configuration, in s (default: 1)")
    parser.add_argument("--min-iters", type=int, default=10,
                        help="minimum timed iterations per configuration (default: 10)")
    parser.add_argument("--max-iters", type=int, default=None,
                        help="maximum timed iterations per configuration (default: no limit)")
    parser.add_argument("--cuda-graph", action="store_true",
                        help="also time the torch image tower captured in a CUDA graph (CUDA only)")
    parser.add_argument("--baseline", default="torch:fp32",
                        help="BACKEND:PRECISION the ratios compare with, or 'none' (default: torch:fp32)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads during the run (default: torch's own choice)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random inputs and weights")
    parser.add_argument("--json", type=Path, default=None, metavar="FILE",
                        help="also write the report as JSON (schema: benchmarks/BENCH_SCHEMA.md)")
    parser.add_argument("--csv", type=Path, default=None, metavar="FILE", help="also write one CSV row per result")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                        help="show a progress bar on stderr (default: on)")


def _baseline(text: str):
    from clippy_rt.errors import InputError

    if text.strip().lower() == "none":
        return None
    backend, sep, precision = text.partition(":")
    if not sep or not backend or not precision:
        raise InputError(f"--baseline must be BACKEND:PRECISION (e.g. torch:fp32) or 'none', got {text!r}")
    return backend.strip(), precision.strip()


def settings_from_args(args):
    """BenchSettings from parsed arguments (validated there: InputError on a bad value)."""
    from clippy_rt.bench.settings import BenchSettings
    from clippy_rt.bench.timer import TimingPolicy
    from clippy_rt.errors import InputError

    frame = args.frame_size if isinstance(args.frame_size, tuple) else (args.frame_size, args.frame_size)
    for option, value in (("--warmup-ms", args.warmup_ms), ("--duration-s", args.duration_s)):
        if not math.isfinite(value) or value < 0:
            raise InputError(f"{option} must be a finite number >= 0, got {value:g}")
    if args.min_iters < 1:
        raise InputError(f"--min-iters must be at least 1, got {args.min_iters}")
    if args.max_iters is not None and args.max_iters < args.min_iters:
        raise InputError(f"--max-iters ({args.max_iters}) must be at least --min-iters ({args.min_iters})")
    policy = TimingPolicy(warmup_s=args.warmup_ms / 1000.0, duration_s=args.duration_s,
                          min_iters=args.min_iters, max_iters=args.max_iters)
    return BenchSettings(
        model=str(args.model) if args.model is not None else None, arch=args.arch,
        onnx_dir=args.onnx_dir, engine_dir=args.engine_dir,
        backends=tuple(args.backend), precisions=tuple(args.precision), devices=tuple(args.device),
        batches=tuple(args.batch), sizes=tuple(args.size) if args.size else None, prompts=tuple(args.prompts),
        stages=tuple(args.stage), frame_size=tuple(frame), policy=policy, cuda_graph=args.cuda_graph,
        baseline=_baseline(args.baseline), seed=args.seed, threads=args.threads)


def run(args) -> int:
    from clippy_rt.bench.report import format_table, write_csv, write_json
    from clippy_rt.bench.run import run_benchmark
    from clippy_rt.errors import InputError

    settings = settings_from_args(args)
    for option, path in (("--json", args.json), ("--csv", args.csv)):
        if path is not None and path.is_dir():
            raise InputError(f"{option} {path} is a directory; give a file name")

    def wrap(cases):
        return progress(cases, "bench", enabled=args.progress)

    bench_run = run_benchmark(settings, wrap=wrap)
    if bench_run.interrupted and args.progress:
        sys.stderr.write("\n")
    if bench_run.model.get("random_weights"):
        print("warning: this model has RANDOM weights; timings are valid, outputs carry no meaning",
              file=sys.stderr)
    sys.stdout.write(format_table(bench_run))
    sys.stdout.flush()
    if args.json is not None:
        write_json(bench_run, args.json)
    if args.csv is not None:
        write_csv(bench_run, args.csv)
    if bench_run.interrupted:
        return 130
    statuses = [result.status for result in bench_run.results]
    if "failed" in statuses or "ok" not in statuses:
        return 1
    return 0
