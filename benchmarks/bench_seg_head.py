"""Seg head: docs/MODEL.md's reference procedure against seg_head's fused paths.

Random clippy-b16-sized inputs (D = 768; a 14 x 14 patch grid for a 224 output, 28 x 28
for 448: one patch per 16 pixels), timed side by side in one run after a warm-up.
Prints a markdown table (median and p90 in ms, speed-up) and, with --write, appends it
with the machine's description to a file.

    python benchmarks/bench_seg_head.py --sizes 224,448 --prompts 21 --repeats 10
    python benchmarks/bench_seg_head.py --device cuda --backend triton --batch 8   # on a GPU

``--backend``: "torch" (the reference's fused path, any device), "triton" or "native"
(the CUDA C++ library) on CUDA. benchmarks/gpu_check.py runs the full GPU matrix.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from clippy_rt.bench.environment import machine_summary
from clippy_rt.bench.stats import summarize
from clippy_rt.bench.timer import TimingPolicy, measure
from clippy_rt.kernels.seg_head import seg_head
from clippy_rt.kernels.seg_head_ref import seg_head_reference_procedure

PATCH = 16
WIDTH = 768


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="224,448", help="comma-separated square output sizes (multiples of 16)")
    parser.add_argument("--prompts", type=int, default=21, help="number of prompts K")
    parser.add_argument("--batch", type=int, default=1, help="images per call")
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per variant")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls per variant first")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--device", default="cpu", help="device of the tensors (cpu or cuda)")
    parser.add_argument("--backend", choices=["torch", "triton", "native"], default="torch",
                        help="the fused implementation to time (triton and native need --device cuda)")
    parser.add_argument("--write", type=Path, default=None, help="append the table and machine info to this file")
    args = parser.parse_args(argv)
    if args.backend != "torch" and not args.device.startswith("cuda"):
        parser.error(f"--backend {args.backend} needs --device cuda (the CPU interpreter is not a benchmark)")
    try:
        args.sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--sizes must be comma-separated integers, got {args.sizes!r}")
    if not args.sizes or any(s < PATCH or s % PATCH for s in args.sizes):
        parser.error(f"--sizes must be positive multiples of {PATCH}, got {args.sizes}")
    for name in ("prompts", "batch", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    if args.warmup < 0:
        parser.error("--warmup must be >= 0")
    return args


def time_ms(fn, repeats: int, warmup: int, device: str):
    """Wall times in ms of ``repeats`` calls after ``warmup`` calls (the shared timer,
    synchronising CUDA after every call)."""
    for _ in range(warmup):
        fn()
    policy = TimingPolicy(warmup_s=0.0, duration_s=0.0, min_iters=repeats, max_iters=repeats)
    return measure(lambda marks: fn(), policy, device=device).host_ms


def fused_head(impl: str):
    """(patch, text, out_size) -> (labels, scores) for the chosen implementation."""
    if impl == "native":
        from clippy_rt.kernels.native import seg_head_native

        return seg_head_native
    return lambda patch, text, out_size: seg_head(patch, text, out_size, impl=impl)


def run(args) -> str:
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    rows = []
    for size in args.sizes:
        grid = size // PATCH
        patch = F.normalize(torch.randn(args.batch, grid, grid, WIDTH, generator=generator), dim=-1).to(args.device)
        text = F.normalize(torch.randn(args.prompts, WIDTH, generator=generator), dim=-1).to(args.device)
        out_size = (size, size)
        reference = time_ms(lambda: seg_head_reference_procedure(patch, text, out_size),
                            args.repeats, args.warmup, args.device)
        head = fused_head(args.backend)
        fused = time_ms(lambda: head(patch, text, out_size), args.repeats, args.warmup, args.device)
        # Same decisions: a benchmark of a wrong result is worthless.
        ref_labels, ref_logits = seg_head_reference_procedure(patch, text, out_size)
        labels, _ = head(patch, text, out_size)
        agree = (labels.long() == ref_labels).float().mean().item()
        reference, fused = summarize(reference), summarize(fused)
        rows.append((size, grid, reference.median, reference.p90, fused.median, fused.p90, agree))
        del ref_logits

    lines = [f"Seg head, {args.device}: D = {WIDTH}, K = {args.prompts}, batch {args.batch}, "
             f"{args.repeats} timed calls after {args.warmup} warm-up",
             "",
             f"| output | grid | reference median ms | reference p90 ms | fused ({args.backend}) median ms "
             "| fused p90 ms | speed-up (median) | labels agree |",
             "|---|---|---|---|---|---|---|---|"]
    for size, grid, ref_med, ref_p90, fused_med, fused_p90, agree in rows:
        lines.append(f"| {size}x{size} | {grid}x{grid} | {ref_med:.1f} | {ref_p90:.1f} | {fused_med:.2f} "
                     f"| {fused_p90:.2f} | {ref_med / fused_med:.1f}x | {100 * agree:.3f}% |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"error: --device {args.device} requested but CUDA is not available", file=sys.stderr)
        return 2
    table = run(args)
    print(table)
    if args.write is not None:
        with open(args.write, "a", encoding="utf-8") as handle:
            handle.write(f"\n## bench_seg_head ({time.strftime('%Y-%m-%d')})\n\n"
                         f"Machine: {machine_summary(args.device)}\n\n{table}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
