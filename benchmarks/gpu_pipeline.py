"""Camera frames to labels on a GPU: the reference pipeline, Engine.segment, Engine.stream
and timm fp16, side by side in one run, plus the image tower against timm's.

    python benchmarks/gpu_pipeline.py [--out DIR] [--batches 1,8] [--repeats 30]

Model: random clippy-b16 weights (ViT-B/16 + Sentence-T5 layout; timings do not depend on
the values), input 448, K = 21 prompts whose embeddings are computed once (a stream
with a fixed vocabulary), B uint8 480x640 RGB frames as numpy arrays on the host, labels
(and scores) at the frame size back on the host unless said. Rows:

- ``reference``: PIL pre-processing (bicubic), timm's ViT in fp32, the reference
  procedure (upsample all 768 feature channels to the frame size, dot, argmax).
- ``segment``: ``Engine.segment`` fp16 on the numpy frames (device pre-processing with
  PIL's bicubic filter); ``segment-kernel``: the same with the fused bilinear kernel.
- ``segment-tensor``: ``Engine.segment`` fp16 on pre-processed CUDA pixels.
- ``stream``: ``Engine.stream`` fp16 (batch B) on the numpy frames, CUDA graphs;
  ``stream-kernel``: the same with the fused bilinear kernel.
- ``timm-fp16-patch``: timm's ViT fp16 on pre-processed CUDA pixels, patch features,
  logits and argmax at patch resolution (28 x 28), labels left on the GPU.
- ``tower-*``: image tower only (``forward_features``) at 448 fp16 on CUDA pixels: ours
  and timm's, eager and captured in a CUDA graph.

Host wall time per call after a warm-up, CUDA synchronised; p50 / p90 in ms and frames/s.
Writes ``gpu_pipeline.json`` and ``gpu_pipeline.md`` to --out, and with --write puts the
table in a markdown file between gpu-pipeline markers (benchmarks/RESULTS.md has them),
after every batch size, so a run stopped part-way keeps the batches it finished. With
--budget-s no row starts once that many seconds have passed since the start (the rows
left are named in the table's heading). --dry-run writes the plan in those files
instead, without a GPU. Exits 0 with a message when there is no CUDA device.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
FRAME = (480, 640)
SIZE = 448
PROMPTS = 21


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("."), help="folder for gpu_pipeline.json / .md")
    parser.add_argument("--batches", default="1,8", help="comma-separated batch sizes")
    parser.add_argument("--repeats", type=int, default=30, help="timed calls per row")
    parser.add_argument("--warmup", type=int, default=5, help="untimed calls per row first")
    parser.add_argument("--write", type=Path, default=None,
                        help="put the table in this markdown file, between gpu-pipeline markers")
    parser.add_argument("--reference-repeats", type=int, default=5, help="timed calls of the slow reference row")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="start no row after this many seconds (the files keep the rows measured)")
    parser.add_argument("--dry-run", action="store_true", help="write the plan (rows, batches) and measure nothing")
    args = parser.parse_args(argv)
    try:
        args.batch_sizes = [int(part) for part in args.batches.split(",")]
    except ValueError:
        parser.error(f"--batches takes comma-separated integers, got {args.batches!r}")
    if not args.batch_sizes or min(args.batch_sizes) < 1:
        parser.error(f"--batches takes positive integers, got {args.batches!r}")
    return args


ROWS = ("reference", "segment", "segment-kernel", "segment-tensor", "stream", "stream-kernel", "timm-fp16-patch",
        "tower-ours", "tower-timm", "tower-ours-graph", "tower-timm-graph")


def timed(fn, repeats: int, warmup: int):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        samples.append((time.perf_counter() - start) * 1000.0)
    samples.sort()
    return {"p50_ms": statistics.median(samples), "p90_ms": samples[min(len(samples) - 1, int(0.9 * len(samples)))],
            "n": len(samples)}


def graphed(fn):
    """fn captured in a CUDA graph after a warm-up on a side stream; returns replay."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def markdown(environment, rows, note: str = "") -> str:
    """The table of ``rows`` (p50 / p90 ms, frames/s, speed-up over the reference row of the
    same batch size), under a heading naming the machine and ``note``."""
    reference = {row["batch"]: row["p50_ms"] for row in rows if row["row"] == "reference"}
    lines = [f"GPU pipeline: {environment['gpu']}, torch {environment['torch']}, Triton {environment['triton']}, "
             f"timm {environment['timm']}; 480x640 uint8 frames, input 448, K = 21, fp16 unless said."
             + (f" {note}" if note else ""), "",
             "| row | B | p50 ms | p90 ms | frames/s | vs reference |", "|---|---|---|---|---|---|"]
    for row in rows:
        ratio = f"{reference[row['batch']] / row['p50_ms']:.1f}x" if row["batch"] in reference else "-"
        lines.append(f"| {row['row']} | {row['batch']} | {row['p50_ms']:.2f} | {row['p90_ms']:.2f} | "
                     f"{row['frames_per_s']:.0f} | {ratio} |")
    return "\n".join(lines)


def write_outputs(args, environment, rows, note: str = "") -> str:
    """Write gpu_pipeline.json / .md to --out (and the section of --write); returns the table."""
    table = markdown(environment, rows, note)
    (args.out / "gpu_pipeline.json").write_text(json.dumps({"environment": environment, "rows": rows, "note": note},
                                                           indent=2))
    (args.out / "gpu_pipeline.md").write_text(table + "\n")
    if args.write is not None:
        write_section(args.write, "### GPU pipeline table\n\n" + table)
    return table


def dry_run(args) -> int:
    environment = {"gpu": "(dry run, no GPU)", "torch": torch.__version__, "timm": "-", "triton": "-",
                   "frame": list(FRAME), "size": SIZE, "prompts": PROMPTS}
    plan = ", ".join(f"B={batch}: {len(ROWS)} rows" for batch in args.batch_sizes)
    note = (f"Dry run, nothing measured. Plan: {plan} ({', '.join(ROWS)}); {args.repeats} timed calls after "
            f"{args.warmup} warm-up calls per row, {args.reference_repeats} for the reference"
            + (f"; no row starts after {args.budget_s:.0f} s." if args.budget_s is not None else "."))
    args.out.mkdir(parents=True, exist_ok=True)
    print(write_outputs(args, environment, [], note))
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.dry_run:
        return dry_run(args)
    if not torch.cuda.is_available():
        print("gpu_pipeline: no CUDA device here; nothing measured")
        return 0
    start = time.perf_counter()
    import timm
    from PIL import Image  # noqa: F401  (the reference pre-processing goes through PIL)

    import clippy_rt
    from clippy_rt.bench.plan import bench_prompts
    from clippy_rt.images import prepare_batch
    from clippy_rt.kernels.seg_head_ref import seg_head_reference_procedure
    from clippy_rt.formats.random_init import random_init

    sys.path.insert(0, str(HERE))
    from bench_vit import build

    args.out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda")
    environment = {"gpu": torch.cuda.get_device_name(device), "torch": torch.__version__, "timm": timm.__version__,
                   "frame": list(FRAME), "size": SIZE, "prompts": PROMPTS}
    try:
        import triton
        environment["triton"] = triton.__version__
    except ImportError:
        environment["triton"] = None
    workdir = Path(tempfile.mkdtemp(prefix="gpu-pipeline-"))
    random_init("clippy-b16", workdir / "model", seed=0)
    engine = clippy_rt.load(workdir / "model", device="cuda", precision="fp16")
    cfg = engine.config.image
    prompts = bench_prompts(PROMPTS)
    text = engine.encode_text(prompts)
    text_half = text.half()
    timm_fp32, _ = build(SIZE, device, torch.float32)
    timm_fp16, ours_fp16 = build(SIZE, device, torch.float16)
    rng = np.random.default_rng(0)
    rows = []
    not_run = []

    def record(name, batch, run):
        """Time run() as row ``name`` unless the budget is spent (then the row is noted as not run)."""
        if args.budget_s is not None and time.perf_counter() - start > args.budget_s:
            not_run.append(f"{name} B={batch}")
            return
        stats = run()
        stats = dict(stats, row=name, batch=batch, frames_per_s=batch * 1000.0 / stats["p50_ms"])
        rows.append(stats)
        print(f"{name:>18} B={batch}: p50 {stats['p50_ms']:.2f} ms, p90 {stats['p90_ms']:.2f} ms, "
              f"{stats['frames_per_s']:.0f} frames/s", flush=True)

    def note() -> str:
        return (f"Not run: the {args.budget_s:.0f} s budget was spent before {', '.join(not_run)}."
                if not_run else "")

    for batch in args.batch_sizes:
        frames = [rng.integers(0, 256, (*FRAME, 3), dtype=np.uint8) for _ in range(batch)]
        pixels_host, _ = prepare_batch(frames, SIZE, mean=cfg.mean, std=cfg.std, patch_size=cfg.patch_size)
        pixels = pixels_host.to(device)

        def reference():
            host, _ = prepare_batch(frames, SIZE, mean=cfg.mean, std=cfg.std, patch_size=cfg.patch_size)
            with torch.inference_mode():
                tokens = timm_fp32.forward_features(host.to(device))
                patch = torch.nn.functional.normalize(tokens[:, 1:], dim=-1).reshape(batch, 28, 28, -1)
                for index in range(batch):
                    _, logits = seg_head_reference_procedure(patch[index:index + 1], text, FRAME)
                    logits.argmax(dim=1).cpu()
                    logits.max(dim=1).values.cpu()

        record("reference", batch, lambda: timed(reference, args.reference_repeats, 1))
        record("segment", batch, lambda: timed(lambda: engine.segment(frames, prompts, size=SIZE), args.repeats,
                                               args.warmup))
        record("segment-kernel", batch, lambda: timed(
            lambda: engine.segment(frames, prompts, size=SIZE, preprocess="kernel"), args.repeats, args.warmup))
        record("segment-tensor", batch, lambda: timed(lambda: engine.segment(pixels, prompts), args.repeats,
                                                      args.warmup))
        for name, choice in (("stream", "device"), ("stream-kernel", "kernel")):
            def stream_row(choice=choice):
                stream = engine.stream(prompts, size=SIZE, batch=batch, preprocess=choice)
                return timed(lambda: stream(frames), args.repeats, args.warmup)

            record(name, batch, stream_row)
        pixels_half = pixels.half()

        def timm_patch():
            with torch.inference_mode():
                tokens = timm_fp16.forward_features(pixels_half)
                patch = torch.nn.functional.normalize(tokens[:, 1:], dim=-1)
                (patch @ text_half.T).argmax(dim=-1)

        record("timm-fp16-patch", batch, lambda: timed(timm_patch, args.repeats, args.warmup))
        with torch.inference_mode():
            record("tower-ours", batch, lambda: timed(lambda: ours_fp16.forward_features(pixels_half), args.repeats,
                                                      args.warmup))
            record("tower-timm", batch, lambda: timed(lambda: timm_fp16.forward_features(pixels_half), args.repeats,
                                                      args.warmup))
            record("tower-ours-graph", batch, lambda: timed(
                graphed(lambda: ours_fp16.forward_features(pixels_half)), args.repeats, args.warmup))
            record("tower-timm-graph", batch, lambda: timed(
                graphed(lambda: timm_fp16.forward_features(pixels_half)), args.repeats, args.warmup))
        write_outputs(args, environment, rows, note())

    print(write_outputs(args, environment, rows, note()))
    return 0


BEGIN, END = "<!-- gpu-pipeline:begin -->", "<!-- gpu-pipeline:end -->"


def write_section(path: Path, text: str) -> None:
    """Replace the text between the gpu-pipeline markers of ``path`` (append them if absent);
    the file is replaced in one step."""
    sys.path.insert(0, str(HERE))
    from gpu_check import write_section as write_marked_section

    write_marked_section(path, text, BEGIN, END)


if __name__ == "__main__":
    sys.exit(main())
