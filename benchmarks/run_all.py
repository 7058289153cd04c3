"""The standard benchmark matrix for the machine this runs on.

    python benchmarks/run_all.py                   # clippy-b16 with random weights
    python benchmarks/run_all.py --model MODEL_DIR [--engine-dir ENGINE_DIR]

On a machine without CUDA it runs the CPU matrix (torch and ONNX Runtime, fp32; sized to
finish within about ten minutes on two cores); with CUDA, the GPU matrix (torch, ONNX
Runtime and, given --engine-dir, TensorRT; fp32 and fp16; batches 1/8/32; CUDA graphs).
It writes, under --out (default: this folder):

- RESULTS.md: only the part between ``<!-- bench:begin -->`` and ``<!-- bench:end -->``
  (created if missing, appended if the file has no such part), and inside it only the
  sub-part of the matrix that ran (``<!-- bench:cpu:... -->`` or ``<!-- bench:gpu:... -->``),
  so the other matrix's last results and everything outside the markers survive;
- plots/{cpu,gpu}_latency_vs_batch.png, _seg_head_vs_size.png, _end_to_end_breakdown.png.

Random weights time exactly like trained ones (the same shapes and operations), so the
default needs no download. ``--quick`` runs a seconds-long matrix on the ``tiny`` model
(for checking this script, not for numbers).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from clippy_rt.bench.report import format_markdown, to_json
from clippy_rt.bench import BenchRun, BenchSettings, CaseResult, run_benchmark
from clippy_rt.bench.timer import TimingPolicy
from clippy_rt.cli.common import progress

HERE = Path(__file__).resolve().parent
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
KINDS = ("cpu", "gpu")
TITLE = "## Benchmarks (`benchmarks/run_all.py`)"
PHASES = ("preprocess", "text", "image", "postprocess")


@dataclass(frozen=True)
class Part:
    """One run of the matrix: a title for RESULTS.md and its settings (model filled in later)."""

    title: str
    settings: BenchSettings


def _settings(**kwargs) -> BenchSettings:
    # The model is filled in per run; "tiny" only satisfies the constructor's check here.
    return BenchSettings(arch="tiny", **kwargs)


def cpu_matrix(backends: Sequence[str], quick: bool) -> List[Part]:
    """Image/text towers at 224 over batch 1/2/4, the towers at 448, pre-processing and the
    seg head over output sizes, and end-to-end segment, all fp32 on the CPU."""
    backends = tuple(backends)
    if quick:
        fast = TimingPolicy(warmup_s=0.0, duration_s=0.0, min_iters=2)
        return [
            Part("Image and text towers", _settings(backends=backends, batches=(1, 2), sizes=(32,), prompts=(5,),
                                                    stages=("image", "text"), policy=fast)),
            Part("Pre-processing and seg head", _settings(batches=(1,), sizes=(32, 64), prompts=(5,),
                                                          stages=("preprocess", "seg-head"), frame_size=(48, 64),
                                                          policy=fast)),
            Part("End to end", _settings(backends=backends, batches=(1,), sizes=(32,), prompts=(5,),
                                         stages=("end-to-end",), frame_size=(48, 64), policy=fast)),
        ]
    towers = TimingPolicy(warmup_s=0.5, duration_s=2.0, min_iters=5)
    light = TimingPolicy(warmup_s=0.2, duration_s=1.0, min_iters=10)
    return [
        Part("Image and text towers, 224 x 224",
             _settings(backends=backends, batches=(1, 2, 4), sizes=(224,), prompts=(21,), stages=("image", "text"),
                       policy=towers)),
        Part("Image tower, 448 x 448",
             _settings(backends=backends, batches=(1,), sizes=(448,), stages=("image",), policy=towers)),
        Part("Pre-processing (480 x 640 frames) and seg head (K = 21, output = input size)",
             _settings(batches=(1,), sizes=(224, 336, 448, 672), prompts=(21,), stages=("preprocess", "seg-head"),
                       policy=light)),
        Part("End to end: segment, 480 x 640 frames, input 224, K = 21",
             _settings(backends=backends, batches=(1,), sizes=(224,), prompts=(21,), stages=("end-to-end",),
                       policy=towers)),
    ]


def gpu_matrix(backends: Sequence[str], quick: bool) -> List[Part]:
    """fp32 and fp16 on CUDA: towers over batch 1/8/32 and sizes 224/448 with CUDA graphs,
    pre-processing and every seg head up to 896, end-to-end at batch 1 and 8."""
    backends = tuple(backends)
    precisions = ("fp32", "fp16")
    if quick:
        fast = TimingPolicy(warmup_s=0.0, duration_s=0.0, min_iters=2)
        return [Part("Towers", _settings(backends=backends, precisions=precisions, devices=("cuda",), batches=(1, 2),
                                         sizes=(32,), prompts=(5,), stages=("image", "text", "seg-head"),
                                         cuda_graph=True, policy=fast))]
    policy = TimingPolicy(warmup_s=0.2, duration_s=2.0, min_iters=10)
    return [
        Part("Image and text towers",
             _settings(backends=backends, precisions=precisions, devices=("cuda",), batches=(1, 8, 32),
                       sizes=(224, 448), prompts=(21,), stages=("image", "text"), cuda_graph=True, policy=policy)),
        Part("Pre-processing (480 x 640 frames) and seg head (K = 21, output = input size)",
             _settings(precisions=precisions, devices=("cuda",), batches=(1, 8), sizes=(224, 448, 896),
                       prompts=(21,), stages=("preprocess", "seg-head"), policy=policy)),
        Part("End to end: segment, 480 x 640 frames, K = 21",
             _settings(backends=backends, precisions=precisions, devices=("cuda",), batches=(1, 8), sizes=(224, 448),
                       prompts=(21,), stages=("end-to-end",), policy=policy)),
    ]


# ---------------------------------------------------------------------------------------------
# RESULTS.md


def _sub_markers(kind: str) -> Tuple[str, str]:
    return f"<!-- bench:{kind}:begin -->", f"<!-- bench:{kind}:end -->"


def _placeholder(kind: str) -> str:
    if kind == "gpu":
        return ("### GPU matrix\n\nNot measured yet: `run_all.py` has not run on a machine with a CUDA device. "
                "Run `python benchmarks/run_all.py` there (add `--engine-dir` for TensorRT) to fill this part.\n")
    return "### CPU matrix\n\nNot measured yet.\n"


def update_results(path: Path, kind: str, body: str) -> str:
    """Write ``body`` as the ``kind`` sub-part of the bench section of ``path``; return the text.

    Text outside ``<!-- bench:begin -->`` / ``<!-- bench:end -->`` is kept byte for byte,
    and so is the other kind's sub-part inside it.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    start, stop = text.find(BEGIN), text.find(END)
    if start != -1 and (stop == -1 or stop < start):
        raise ValueError(f"{path} has {BEGIN} without a following {END}; fix the markers by hand")
    section = text[start + len(BEGIN):stop] if start != -1 else ""
    parts = {}
    for name in KINDS:
        sub_begin, sub_end = _sub_markers(name)
        match = re.search(re.escape(sub_begin) + r"\n?(.*?)" + re.escape(sub_end), section, re.DOTALL)
        parts[name] = match.group(1) if match else _placeholder(name)
    parts[kind] = body if body.endswith("\n") else body + "\n"
    inner = [TITLE, ""]
    for name in KINDS:
        sub_begin, sub_end = _sub_markers(name)
        inner += [sub_begin, parts[name].rstrip("\n"), sub_end, ""]
    new_section = BEGIN + "\n" + "\n".join(inner) + END
    if start == -1:
        updated = text.rstrip("\n") + "\n\n" + new_section + "\n"
    else:
        updated = text[:start] + new_section + text[stop + len(END):]
    path.write_text(updated)
    return updated


def machine_summary(env: Dict[str, object]) -> List[str]:
    cpu = env.get("cpu") or {}
    lines = [f"- CPU: {cpu.get('model')} ({cpu.get('architecture')}), {cpu.get('physical_cores')} cores / "
             f"{cpu.get('logical_threads')} threads ({cpu.get('usable_threads')} usable), torch threads "
             f"{env.get('torch_threads')}, memory {_gib(env.get('memory_bytes'))}"]
    if env.get("load_average"):
        lines.append(f"- Load average at the start (1 / 5 / 15 min): {' / '.join(map(str, env['load_average']))} "
                     "(other work on the machine; high values make the tails longer)")
    gpu = env.get("gpu")
    if gpu:
        lines.append(f"- GPU: {gpu.get('name')} (compute {gpu.get('capability')}, {_gib(gpu.get('memory_bytes'))}), "
                     f"driver {gpu.get('driver')}, CUDA {gpu.get('cuda_runtime')}, cuDNN {gpu.get('cudnn')}")
        if gpu.get("clocks"):
            lines.append("- GPU clocks and power: " + ", ".join(f"{k} {v}" for k, v in gpu["clocks"].items()))
    else:
        lines.append("- GPU: none")
    if env.get("jetson"):
        jetson = env["jetson"]
        lines.append(f"- Jetson: {jetson.get('model')}, {jetson.get('l4t')}, nvpmodel {jetson.get('nvpmodel')}, "
                     f"jetson_clocks {jetson.get('jetson_clocks') or 'unknown (needs root)'}")
    versions = env.get("versions") or {}
    lines.append("- Versions: " + ", ".join(f"{k} {v if v else '(not installed)'}" for k, v in versions.items())
                 + f", Python {env.get('python')}")
    lines.append(f"- Platform: {env.get('platform')}")
    return lines


def _gib(value) -> str:
    return f"{value / 2**30:.1f} GiB" if isinstance(value, (int, float)) else "unknown"


def render_body(kind: str, runs: Sequence[Tuple[Part, BenchRun]], notes: Sequence[str],
                plots: Sequence[Path], out_dir: Path) -> str:
    first = runs[0][1]
    model = first.model
    date = first.started
    weights = "random weights (timings are those of trained weights: same shapes and operations)" \
        if model.get("random_weights") else "trained weights"
    lines = [f"### {kind.upper()} matrix", "",
             f"Measured {date} with `python benchmarks/run_all.py` on `{model.get('arch')}`, {weights}. "
             "Host latency in ms, nearest-rank percentiles; speedup = baseline median / median, the baseline "
             "being torch fp32 with the reference post-processing (PIL pre-processing, cold text cache, "
             "reference seg head) at the same batch, size and K. Schema of the raw JSON: "
             "[BENCH_SCHEMA.md](BENCH_SCHEMA.md).", ""]
    lines += machine_summary(first.environment)
    for note in notes:
        lines.append(f"- {note}")
    for part, run in runs:
        policy = run.settings.policy
        lines += ["", f"#### {part.title}", "",
                  f"Warm-up {policy.warmup_s * 1000:.0f} ms, then at least {policy.duration_s:g} s and "
                  f"{policy.min_iters} iterations per configuration.", "", format_markdown(run).rstrip("\n")]
    if plots:
        lines += ["", "#### Plots", ""]
        for plot in plots:
            lines.append(f"![{plot.stem}]({plot.relative_to(out_dir).as_posix()})")
    if kind == "cpu":
        lines += ["", "The GPU half of the matrix runs from the same command on a CUDA machine."]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Plots


def _ok(runs: Sequence[BenchRun], stage: str) -> List[CaseResult]:
    return [r for run in runs for r in run.results if r.case.stage == stage and r.status == "ok"]


def plot_all(runs: Sequence[BenchRun], plot_dir: Path, kind: str) -> List[Path]:
    """Latency vs batch (image tower), seg head vs output size, end-to-end breakdown.
    Returns the PNGs written (a plot without data is not written)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    plain = ticker.FuncFormatter(lambda value, _: f"{value:g}")

    plot_dir.mkdir(parents=True, exist_ok=True)
    written = []

    image = _ok(runs, "image")
    series: Dict[Tuple, List[CaseResult]] = {}
    for result in image:
        case = result.case
        series.setdefault((case.backend, case.precision, case.variant, case.device, case.size), []).append(result)
    series = {key: values for key, values in series.items() if len({r.case.batch for r in values}) > 1}
    if series:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for (backend, precision, variant, device, size), results in sorted(series.items()):
            results = sorted(results, key=lambda r: r.case.batch)
            batches = [r.case.batch for r in results]
            medians = [r.latency.median for r in results]
            upper = [r.latency.p99 - r.latency.median for r in results]
            lower = [r.latency.median - r.latency.min for r in results]
            name = f"{backend} {precision}" + ("" if variant == "forward" else f" {variant}") + f" {size}px"
            ax.errorbar(batches, medians, yerr=[lower, upper], marker="o", capsize=3, label=name)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        all_batches = sorted({r.case.batch for values in series.values() for r in values})
        ax.set_xticks(all_batches)
        ax.xaxis.set_major_formatter(plain)
        ax.xaxis.set_minor_locator(ticker.NullLocator())
        _plain_log_axis(ax.yaxis, plain)
        ax.set_xlabel("batch size")
        ax.set_ylabel("image tower latency, ms (median; bars: min to p99)")
        ax.set_title(f"Image tower latency vs batch ({kind.upper()})")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        written.append(_save(fig, plot_dir / f"{kind}_latency_vs_batch.png"))

    heads = _ok(runs, "seg-head")
    if heads:
        batch = min(r.case.batch for r in heads)
        k = min(r.case.prompts for r in heads)
        lines: Dict[Tuple, List[CaseResult]] = {}
        for result in heads:
            if result.case.batch == batch and result.case.prompts == k:
                lines.setdefault((result.case.variant, result.case.precision, result.case.device), []).append(result)
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for (variant, precision, device), results in sorted(lines.items()):
            results = sorted(results, key=lambda r: r.case.size)
            ax.plot([r.case.size for r in results], [r.latency.median for r in results], marker="o",
                    label=f"{variant} {precision}")
        ax.set_yscale("log")
        _plain_log_axis(ax.yaxis, plain)
        ax.set_xticks(sorted({r.case.size for values in lines.values() for r in values}))
        ax.set_xlabel("output size (square side, px); patch grid = size / patch")
        ax.set_ylabel("seg head latency, ms (median)")
        ax.set_title(f"Seg head vs output size, B = {batch}, K = {k} ({kind.upper()})")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        written.append(_save(fig, plot_dir / f"{kind}_seg_head_vs_size.png"))

    ends = _ok(runs, "end-to-end")
    if ends:
        batch = min(r.case.batch for r in ends)
        size = min(r.case.size for r in ends)
        chosen = [r for r in ends if r.case.batch == batch and r.case.size == size]
        fig, ax = plt.subplots(figsize=(8, 0.6 * len(chosen) + 1.8))
        labels = [f"{r.case.variant} {r.case.backend} {r.case.precision}" for r in chosen]
        left = [0.0] * len(chosen)
        for phase in PHASES + ("other",):
            widths = []
            for result in chosen:
                if phase == "other":
                    known = sum(result.phases[p].median for p in PHASES if p in result.phases)
                    widths.append(max(0.0, result.latency.median - known))
                else:
                    widths.append(result.phases[phase].median if phase in result.phases else 0.0)
            ax.barh(labels, widths, left=left, label=phase)
            left = [a + b for a, b in zip(left, widths)]
        ax.set_xlabel("ms (median of each phase; 'other' = median total - sum of phases)")
        ax.set_title(f"End-to-end segment breakdown, B = {batch}, input {size} ({kind.upper()})")
        # Outside the axes: inside, it would cover the longest bar.
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        ax.grid(True, axis="x", alpha=0.3)
        written.append(_save(fig, plot_dir / f"{kind}_end_to_end_breakdown.png"))
    return written


def _plain_log_axis(axis, formatter) -> None:
    """Log-scale ticks written as plain numbers (0.5, 2, 300); minor ticks are labelled too
    when the axis spans less than a decade and a half (otherwise they would crowd)."""
    from matplotlib import ticker

    low, high = axis.get_view_interval()
    axis.set_major_formatter(formatter)
    axis.set_minor_formatter(formatter if low > 0 and high / low < 30 else ticker.NullFormatter())


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------
# Main


def _export_onnx(model: Path, out: Path, fp16: bool, config) -> Tuple[Optional[Path], Optional[str]]:
    """Export once for every part; (ONNX directory, None) or (None, why not)."""
    try:
        import onnxruntime  # noqa: F401
        from clippy_rt.export.onnx import export_onnx
    except ImportError as exc:
        return None, f"ONNX Runtime not measured: {exc}"
    try:
        export_onnx(model, out, fp16=fp16, check_sizes=[config.image.image_size], check_batches=(1,))
    except Exception as exc:  # reported in RESULTS.md; the torch matrix still runs
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return None, f"ONNX Runtime not measured: the export failed: {first}"
    return out, None


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="model directory (default: random weights)")
    parser.add_argument("--arch", default="clippy-b16", choices=["clippy-b16", "tiny"],
                        help="architecture of the random weights when no --model is given")
    parser.add_argument("--engine-dir", type=Path, default=None,
                        help="TensorRT engine directory (GPU matrix: adds the tensorrt backend)")
    parser.add_argument("--backends", default=None,
                        help="comma-separated backends (default: torch,onnxruntime, plus tensorrt with --engine-dir)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="which matrix: auto = gpu when CUDA is available (default)")
    parser.add_argument("--out", type=Path, default=HERE, help="folder of RESULTS.md and plots/ (default: benchmarks/)")
    parser.add_argument("--json", type=Path, default=None, help="also write every run's JSON report into this file")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--quick", action="store_true", help="seconds-long check of this script on the tiny model")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    kind = args.device if args.device != "auto" else ("gpu" if torch.cuda.is_available() else "cpu")
    if kind == "gpu" and not torch.cuda.is_available():
        print("run_all.py: error: --device cuda asked for, but CUDA is not available here", file=sys.stderr)
        return 1
    if args.backends:
        backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    else:
        backends = ["torch", "onnxruntime"] + (["tensorrt"] if args.engine_dir is not None else [])
    notes: List[str] = []
    from clippy_rt.config import ClippyConfig
    from clippy_rt.formats.random_init import random_init

    with tempfile.TemporaryDirectory(prefix="clippy-rt-run-all-") as tmp:
        arch = "tiny" if args.quick else args.arch
        if args.model is not None:
            model = args.model
        else:
            print(f"run_all.py: writing random {arch} weights", file=sys.stderr)
            model = random_init(arch, Path(tmp) / arch, seed=0)
        config = ClippyConfig.load(Path(model) / "config.json")
        onnx_dir = None
        if "onnxruntime" in backends:
            print("run_all.py: exporting to ONNX", file=sys.stderr)
            onnx_dir, why = _export_onnx(Path(model), Path(tmp) / "onnx", kind == "gpu", config)
            if onnx_dir is None:
                backends.remove("onnxruntime")
                notes.append(why)
        if "tensorrt" in backends and args.engine_dir is None:
            backends.remove("tensorrt")
            notes.append("TensorRT not measured: give --engine-dir (made by `clippy-rt build`)")
        if kind == "cpu":
            notes.append("TensorRT, Triton and the native CUDA kernels need a CUDA device: not in the CPU matrix")
        if args.threads is not None:
            notes.append(f"torch CPU threads set to {args.threads} with --threads")
        parts = cpu_matrix(backends, args.quick) if kind == "cpu" else gpu_matrix(backends, args.quick)
        runs: List[Tuple[Part, BenchRun]] = []
        for index, part in enumerate(parts, 1):
            settings = dataclasses.replace(
                part.settings, model=str(model), arch=None, onnx_dir=str(onnx_dir) if onnx_dir else None,
                engine_dir=str(args.engine_dir) if args.engine_dir else None, threads=args.threads)
            label = f"part {index}/{len(parts)}"
            run = run_benchmark(settings, wrap=lambda cases, label=label: progress(cases, label,
                                                                                    enabled=args.progress))
            runs.append((part, run))
            if run.interrupted:
                notes.append(f"interrupted during part {index}: later parts did not run")
                break

    out_dir = args.out
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = plot_all([run for _, run in runs], out_dir / "plots", kind)
    body = render_body(kind, runs, notes, plots, out_dir)
    update_results(out_dir / "RESULTS.md", kind, body)
    if args.json is not None:
        import json

        args.json.write_text(json.dumps([to_json(run) for _, run in runs], indent=2) + "\n")
    statuses = [r.status for _, run in runs for r in run.results]
    print(f"run_all.py: wrote {out_dir / 'RESULTS.md'} and {len(plots)} plots "
          f"({statuses.count('ok')} measured, {statuses.count('skipped')} skipped, "
          f"{statuses.count('failed')} failed) at {datetime.datetime.now():%H:%M:%S}", file=sys.stderr)
    if any(run.interrupted for _, run in runs):
        return 130
    return 1 if "failed" in statuses else 0


if __name__ == "__main__":
    sys.exit(main())
