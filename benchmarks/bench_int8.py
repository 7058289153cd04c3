"""The int8 CPU path against torch float32 eager, and bfloat16, side by side in one run.

    python benchmarks/bench_int8.py [--model-dir DIR] [--size 224] [--batch 1] [--repeats 15]
        [--scenes 100] [--seed 1009000000] [--threads N] [--json OUT]

Part 1, latency: the image tower of a `clippy-b16` (random weights unless --model-dir) at
batch x size x size, through the public stage ``Engine.encode_image`` on a prepared pixel
tensor, for each variant:

- torch fp32:  ``clippy_rt.load(MODEL, backend="torch")``, eager, torch threads = physical cores;
- torch bf16:  the same with ``precision="bf16"`` (only where /proc/cpuinfo lists avx512_bf16 or
               amx_bf16: elsewhere bfloat16 is emulated and slow);
- ort fp32:    ``clippy_rt.load(ONNX_DIR, backend="onnxruntime")``;
- ort int8:    ``clippy_rt.load(ONNX_DIR, backend="onnxruntime", precision="int8")``, the graphs of
               ``clippy-rt export --int8``.

Variants run interleaved, one call each per round, after one warm-up call each, so load from
other processes hits them alike. Reported per variant: median, p90 (nearest rank) and min in
ms, the ratio of medians to torch fp32 and the median of the per-round ratios (paired, so less
sensitive to load drifting during the run), and the patch features' cosine similarity to torch
fp32 (min and mean over patches).

Part 2, agreement: the demo model (`clippy_rt.load("demo")`) exported with --int8, evaluated by
``clippy_rt.evaluate`` on --scenes generated scenes from --seed (default: a held-out range that
neither training, validation, the reported test set, the README figures nor the example images
use), per variant: mIoU, pixel accuracy, and label agreement with a separately loaded torch
fp32 engine.

The last line says which low-precision path to keep: the fastest of torch bf16 and ort int8
among those that meet the accuracy goals (label agreement with torch fp32 >= 99 %, mIoU
within 0.5 points of torch fp32's).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List

import torch

HELD_OUT_SEED = 10**9 + 11_000_000


def cpu_flags() -> List[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line.split(":", 1)[1].split()
    except OSError:
        pass
    return []


def has_native_bf16() -> bool:
    flags = set(cpu_flags())
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def machine_line(threads: int) -> str:
    import onnxruntime

    from clippy_rt.bench.environment import cpu_info

    cpu = cpu_info()
    flags = set(cpu_flags())
    isa = ", ".join(f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
                    if f in flags)
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    return (f"{cpu['model']} ({cpu['usable_threads']} usable threads; {isa}), {platform.system()} "
            f"{platform.machine()}; torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, python "
            f"{platform.python_version()}; {threads} threads for torch and ONNX Runtime; load average {load}")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------
# Part 1: latency
# ----------------------------------------------------------------------------------------------

def time_variants(runs: Dict[str, Callable[[], torch.Tensor]], repeats: int) -> Dict[str, List[float]]:
    """Interleaved timing: {variant: [ms per call]}, one call per variant per round."""
    times: Dict[str, List[float]] = {name: [] for name in runs}
    for round_index in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append((time.perf_counter() - start) * 1000.0)
        log(f"round {round_index + 1}/{repeats}: " + ", ".join(f"{n} {t[-1]:.0f} ms" for n, t in times.items()))
    return times


def latency_part(args, workdir: Path, threads: int) -> Dict[str, object]:
    import clippy_rt
    from clippy_rt.backends.onnxruntime import load_onnxruntime
    from clippy_rt.bench.stats import median, summarize
    from clippy_rt.export.onnx import export_onnx
    from clippy_rt.formats.random_init import random_init

    model_dir = args.model_dir
    if model_dir is None:
        log("writing a random clippy-b16 model ...")
        model_dir = random_init("clippy-b16", workdir / "b16", seed=0)
    log("exporting with --int8 ...")
    export_onnx(model_dir, workdir / "b16-onnx", int8=True, seg_head=False, check_sizes=[args.size],
                check_batches=[args.batch], log=log)
    engines = {"torch fp32": clippy_rt.load(model_dir, backend="torch", precision="fp32")}
    if has_native_bf16() or args.force_bf16:
        engines["torch bf16"] = clippy_rt.load(model_dir, backend="torch", precision="bf16")
    engines["ort fp32"] = load_onnxruntime(workdir / "b16-onnx", precision="fp32", threads=threads)
    engines["ort int8"] = load_onnxruntime(workdir / "b16-onnx", precision="int8", threads=threads)
    pixels = torch.randn(args.batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))

    def runner(engine):
        def run():
            with torch.inference_mode():
                return engine.encode_image(pixels).patch
        return run

    runs = {name: runner(engine) for name, engine in engines.items()}
    outputs = {name: run() for name, run in runs.items()}
    for _ in range(args.warmup - 1):
        for run in runs.values():
            run()
    reference = outputs["torch fp32"].reshape(-1, outputs["torch fp32"].shape[-1])
    cosines = {}
    for name, patch in outputs.items():
        cosine = torch.nn.functional.cosine_similarity(patch.reshape(reference.shape), reference, dim=-1)
        cosines[name] = (float(cosine.min()), float(cosine.mean()))
    times = time_variants(runs, args.repeats)
    base = times["torch fp32"]
    rows = {}
    for name, samples in times.items():
        stats = summarize(samples)
        paired = sorted(s / b for s, b in zip(samples, base))
        rows[name] = {"stats": stats.to_dict(), "ratio_of_medians": stats.median / summarize(base).median,
                      "median_paired_ratio": median(paired), "cosine_min": cosines[name][0],
                      "cosine_mean": cosines[name][1]}
    return {"size": args.size, "batch": args.batch, "repeats": args.repeats, "model_dir": str(model_dir),
            "variants": rows}


def format_latency(part: Dict[str, object]) -> str:
    lines = [f"Image tower, batch {part['batch']} at {part['size']}x{part['size']}, {part['repeats']} interleaved "
             f"rounds:", "",
             "| variant | median ms | p90 ms | min ms | median / torch fp32 | median of paired ratios | "
             "patch cosine vs torch fp32 (min / mean) |",
             "|---|---|---|---|---|---|---|"]
    for name, row in part["variants"].items():
        stats = row["stats"]
        lines.append(f"| {name} | {stats['median']:.1f} | {stats['p90']:.1f} | {stats['min']:.1f} | "
                     f"{row['ratio_of_medians']:.2f}x | {row['median_paired_ratio']:.2f}x | "
                     f"{row['cosine_min']:.5f} / {row['cosine_mean']:.5f} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Part 2: agreement on the demo model
# ----------------------------------------------------------------------------------------------

def agreement_part(args, workdir: Path, threads: int) -> Dict[str, object]:
    import clippy_rt
    from clippy_rt.backends.onnxruntime import load_onnxruntime
    from clippy_rt.formats.model_dir import demo_model_dir
    from clippy_rt.evaluate import evaluate, synthetic_set
    from clippy_rt.export.onnx import export_onnx

    log("exporting the demo model with --int8 ...")
    export_onnx(demo_model_dir(), workdir / "demo-onnx", int8=True, seg_head=False, log=log)
    eval_set = synthetic_set(args.scenes, args.seed)
    reference = clippy_rt.load("demo", backend="torch", precision="fp32")
    engines = {"torch fp32": clippy_rt.load("demo", backend="torch", precision="fp32")}
    if has_native_bf16() or args.force_bf16:
        engines["torch bf16"] = clippy_rt.load("demo", backend="torch", precision="bf16")
    engines["ort fp32"] = load_onnxruntime(workdir / "demo-onnx", precision="fp32", threads=threads)
    engines["ort int8"] = load_onnxruntime(workdir / "demo-onnx", precision="int8", threads=threads)
    rows = {}
    for name, engine in engines.items():
        log(f"evaluating {name} on {eval_set.name} ...")
        result = evaluate(engine, eval_set, reference=reference)
        rows[name] = {"miou": result.miou, "pixel_accuracy": result.pixel_accuracy, "agreement": result.agreement}
    return {"dataset": eval_set.name, "variants": rows}


def format_agreement(part: Dict[str, object]) -> str:
    base = part["variants"]["torch fp32"]["miou"]
    lines = [f"Demo model on {part['dataset']} (held-out generated scenes):", "",
             "| variant | mIoU % | mIoU change (points) | pixel accuracy % | label agreement with torch fp32 % |",
             "|---|---|---|---|---|"]
    for name, row in part["variants"].items():
        lines.append(f"| {name} | {100 * row['miou']:.2f} | {100 * (row['miou'] - base):+.2f} | "
                     f"{100 * row['pixel_accuracy']:.2f} | {100 * row['agreement']:.2f} |")
    return "\n".join(lines)


MIN_AGREEMENT = 0.99
MAX_MIOU_CHANGE = 0.005


def verdict(latency: Dict[str, object], agreement: Dict[str, object]) -> str:
    candidates = [name for name in ("torch bf16", "ort int8") if name in latency["variants"]]
    rows = agreement["variants"]
    base = rows["torch fp32"]["miou"]
    meeting = [n for n in candidates if rows[n]["agreement"] >= MIN_AGREEMENT
               and abs(rows[n]["miou"] - base) <= MAX_MIOU_CHANGE]
    if not meeting:
        return "keep neither: no low-precision variant meets the accuracy goals"
    keep = min(meeting, key=lambda n: latency["variants"][n]["stats"]["median"])
    parts = [f"{n}: {latency['variants'][n]['ratio_of_medians']:.2f}x torch fp32, "
             f"{100 * agreement['variants'][n]['agreement']:.2f} % agreement" for n in candidates]
    return f"keep {keep} ({'; '.join(parts)})"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, default=None, help="model for the latency part (default: random "
                        "clippy-b16, about 800 MB in a temporary directory)")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=15, help="timed rounds (default: 15)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls per variant first (default: 2)")
    parser.add_argument("--scenes", type=int, default=100, help="generated scenes for the agreement (default: 100)")
    parser.add_argument("--seed", type=int, default=HELD_OUT_SEED,
                        help=f"first scene seed (default: {HELD_OUT_SEED}, held out)")
    parser.add_argument("--threads", type=int, default=None, help="threads (default: physical cores)")
    parser.add_argument("--force-bf16", action="store_true", help="time bf16 even without native bf16 instructions")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures as JSON")
    args = parser.parse_args(argv)

    from clippy_rt.backends.onnxruntime import physical_cores

    threads = args.threads or physical_cores()
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory(prefix="bench-int8-") as tmp:
        workdir = Path(tmp)
        agreement = agreement_part(args, workdir, threads)
        latency = latency_part(args, workdir, threads)
    print(f"Machine: {machine_line(threads)}\n")
    print(format_latency(latency))
    print()
    print(format_agreement(agreement))
    print()
    print(verdict(latency, agreement))
    if args.json:
        args.json.write_text(json.dumps({"machine": machine_line(threads), "latency": latency,
                                         "agreement": agreement}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
