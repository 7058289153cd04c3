"""Benchmark reports: a human table, JSON (schema in ``JSON_SCHEMA``, documented in
benchmarks/BENCH_SCHEMA.md) and CSV.

Ratios: ``speedup = baseline median / median`` of host latency, where the baseline is the
same stage, device, batch, size and prompt count run by the stage's baseline variant on
the baseline backend and precision (``stages`` module doc). Above 1 is faster than the
baseline.

GEMM limit (CPU): an image tower row's GFLOP/s (its matrix products, ``clippy_rt.bench.gemm``)
over the fastest ``gemm`` probe of the same precision, batch and size in the run.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from .settings import BenchRun, CaseResult
from .stats import LatencyStats

SCHEMA_NAME = "clippy-rt-bench"
SCHEMA_VERSION = 1
STAT_FIELDS = ("min", "mean", "median", "p90", "p95", "p99", "max", "std")

_NUMBER = {"type": "number"}
_NULLABLE_NUMBER = {"type": ["number", "null"]}
_NULLABLE_INT = {"type": ["integer", "null"]}
_NULLABLE_STRING = {"type": ["string", "null"]}
_STATS = {
    "type": "object",
    "required": list(STAT_FIELDS),
    "properties": {name: _NUMBER for name in STAT_FIELDS},
    "additionalProperties": False,
}
_NULLABLE_STATS = {"anyOf": [_STATS, {"type": "null"}]}

JSON_SCHEMA: Dict[str, object] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "clippy-rt bench report",
    "type": "object",
    "required": ["schema", "schema_version", "started", "finished", "interrupted", "planned", "completed",
                 "percentile_method", "time_unit", "settings", "model", "environment", "results"],
    "properties": {
        "schema": {"const": SCHEMA_NAME},
        "schema_version": {"const": SCHEMA_VERSION},
        "started": {"type": "string"},
        "finished": {"type": "string"},
        "interrupted": {"type": "boolean"},
        "planned": {"type": "integer"},
        "completed": {"type": "integer"},
        "percentile_method": {"const": "nearest-rank"},
        "time_unit": {"const": "ms"},
        "settings": {
            "type": "object",
            "required": ["model", "arch", "onnx_dir", "engine_dir", "backends", "precisions", "devices", "batches", "sizes", "prompts",
                         "stages", "frame_size", "warmup_ms", "duration_s", "min_iters", "max_iters",
                         "cuda_graph", "seed", "threads", "baseline"],
            "properties": {
                "model": _NULLABLE_STRING,
                "arch": _NULLABLE_STRING,
                "onnx_dir": _NULLABLE_STRING,
                "engine_dir": _NULLABLE_STRING,
                "backends": {"type": "array", "items": {"type": "string"}},
                "precisions": {"type": "array", "items": {"type": "string"}},
                "devices": {"type": "array", "items": {"type": "string"}},
                "batches": {"type": "array", "items": {"type": "integer"}},
                "sizes": {"type": ["array", "null"], "items": {"type": "integer"}},
                "prompts": {"type": "array", "items": {"type": "integer"}},
                "stages": {"type": "array", "items": {"type": "string"}},
                "frame_size": {"type": "array", "items": {"type": "integer"}},
                "warmup_ms": _NUMBER,
                "duration_s": _NUMBER,
                "min_iters": {"type": "integer"},
                "max_iters": _NULLABLE_INT,
                "cuda_graph": {"type": "boolean"},
                "seed": {"type": "integer"},
                "threads": _NULLABLE_INT,
                "baseline": {
                    "anyOf": [{"type": "null"},
                              {"type": "object", "required": ["backend", "precision"],
                               "properties": {"backend": {"type": "string"}, "precision": {"type": "string"}}}],
                },
            },
        },
        "model": {
            "type": "object",
            "required": ["path", "kind", "arch", "random_weights", "source", "generated_from_arch"],
            "properties": {
                "path": _NULLABLE_STRING,
                "kind": {"enum": ["model", "onnx", "engine"]},
                "arch": {"type": "string"},
                "random_weights": {"type": "boolean"},
                "source": {"type": "string"},
                "generated_from_arch": _NULLABLE_STRING,
            },
        },
        "environment": {
            "type": "object",
            "required": ["date", "platform", "python", "cpu", "memory_bytes", "torch_threads", "load_average", "gpu",
                         "versions", "onnxruntime_providers", "cpu_governor", "jetson"],
            "properties": {
                "date": {"type": "string"},
                "platform": {"type": "string"},
                "python": {"type": "string"},
                "cpu": {
                    "type": "object",
                    "required": ["model", "architecture", "logical_threads", "physical_cores", "usable_threads"],
                    "properties": {
                        "model": _NULLABLE_STRING,
                        "architecture": {"type": "string"},
                        "logical_threads": _NULLABLE_INT,
                        "physical_cores": _NULLABLE_INT,
                        "usable_threads": _NULLABLE_INT,
                        "isa": {"type": "array", "items": {"type": "string"}},
                    },
                },
                "memory_bytes": _NULLABLE_INT,
                "torch_threads": {"type": "integer"},
                "load_average": {"type": ["array", "null"], "items": {"type": "number"}},
                "gpu": {
                    "anyOf": [{"type": "null"}, {
                        "type": "object",
                        "required": ["name", "index", "count", "capability", "memory_bytes", "multiprocessors",
                                     "cuda_runtime", "cudnn", "driver"],
                        "properties": {
                            "name": {"type": "string"},
                            "index": {"type": "integer"},
                            "count": {"type": "integer"},
                            "capability": {"type": "string"},
                            "memory_bytes": {"type": "integer"},
                            "multiprocessors": {"type": "integer"},
                            "cuda_runtime": _NULLABLE_STRING,
                            "cudnn": _NULLABLE_INT,
                            "driver": _NULLABLE_STRING,
                            "clocks": {"type": "object"},
                        },
                    }],
                },
                "versions": {
                    "type": "object",
                    "required": ["torch", "onnxruntime", "tensorrt", "triton"],
                    "additionalProperties": _NULLABLE_STRING,
                },
                "onnxruntime_providers": {"type": ["array", "null"], "items": {"type": "string"}},
                "cpu_governor": _NULLABLE_STRING,
                "jetson": {
                    "anyOf": [{"type": "null"}, {
                        "type": "object",
                        "required": ["l4t", "model", "nvpmodel", "jetson_clocks"],
                        "properties": {"l4t": _NULLABLE_STRING, "model": _NULLABLE_STRING,
                                       "nvpmodel": _NULLABLE_STRING, "jetson_clocks": _NULLABLE_STRING},
                    }],
                },
            },
        },
        "results": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["stage", "variant", "backend", "precision", "device", "batch", "size", "prompts",
                             "status", "reason", "unit", "items_per_iteration", "iterations",
                             "warmup_iterations", "latency_ms", "device_ms", "phases_ms", "phase_clock",
                             "throughput", "throughput_unit", "memory", "baseline_median_ms", "speedup"],
                "properties": {
                    "stage": {"enum": ["preprocess", "image", "text", "seg-head", "end-to-end", "stream", "gemm"]},
                    "variant": {"type": "string"},
                    "backend": {"type": "string"},
                    "precision": {"type": "string"},
                    "device": {"type": "string"},
                    "batch": _NULLABLE_INT,
                    "size": _NULLABLE_INT,
                    "prompts": _NULLABLE_INT,
                    "status": {"enum": ["ok", "skipped", "failed"]},
                    "reason": _NULLABLE_STRING,
                    "unit": {"enum": ["images", "prompts", "products"]},
                    "items_per_iteration": {"type": "integer"},
                    "iterations": {"type": "integer"},
                    "warmup_iterations": {"type": "integer"},
                    "latency_ms": _NULLABLE_STATS,
                    "device_ms": _NULLABLE_STATS,
                    "phases_ms": {"type": "object", "additionalProperties": _STATS},
                    "phase_clock": {"enum": ["host", "cuda-events", None]},
                    "throughput": _NULLABLE_NUMBER,
                    "throughput_unit": {"enum": ["images/s", "prompts/s", "products/s"]},
                    "memory": {
                        "type": "object",
                        "required": ["peak_rss_bytes", "rss_scope", "peak_device_bytes"],
                        "properties": {
                            "peak_rss_bytes": _NULLABLE_INT,
                            "rss_scope": {"enum": ["measurement", "process", None]},
                            "peak_device_bytes": _NULLABLE_INT,
                        },
                    },
                    "baseline_median_ms": _NULLABLE_NUMBER,
                    "speedup": _NULLABLE_NUMBER,
                    "gflops": _NULLABLE_NUMBER,
                    "fraction_of_gemm_limit": _NULLABLE_NUMBER,
                },
            },
        },
    },
}


# ---------------------------------------------------------------------------------------------
# JSON


def _stats(stats: Optional[LatencyStats]) -> Optional[Dict[str, float]]:
    if stats is None:
        return None
    return {name: round(float(getattr(stats, name)), 6) for name in STAT_FIELDS}


def _finite(value: Optional[float]) -> Optional[float]:
    if value is None or not math.isfinite(value):
        return None
    return round(float(value), 6)


def result_to_dict(run: BenchRun, result: CaseResult) -> Dict[str, object]:
    """One entry of ``results`` (see JSON_SCHEMA)."""
    case = result.case
    baseline = run.baseline_of(result)
    baseline_median = baseline.latency.median if baseline is not None and baseline.latency else None
    speedup = None
    if baseline_median is not None and result.latency is not None and result.latency.median > 0:
        speedup = baseline_median / result.latency.median
    return {
        "stage": case.stage, "variant": case.variant, "backend": case.backend, "precision": case.precision,
        "device": case.device, "batch": case.batch, "size": case.size, "prompts": case.prompts,
        "status": result.status, "reason": result.reason,
        "unit": case.unit, "items_per_iteration": case.items,
        "iterations": result.latency.count if result.latency else 0,
        "warmup_iterations": result.warmup_iters,
        "latency_ms": _stats(result.latency),
        "device_ms": _stats(result.device_latency),
        "phases_ms": {name: _stats(stats) for name, stats in result.phases.items()},
        "phase_clock": result.phase_clock,
        "throughput": _finite(result.throughput),
        "throughput_unit": f"{case.unit}/s",
        "memory": {"peak_rss_bytes": result.peak_rss_bytes, "rss_scope": result.rss_scope,
                   "peak_device_bytes": result.peak_device_bytes},
        "baseline_median_ms": _finite(baseline_median),
        "speedup": _finite(speedup),
        "gflops": _finite(result.gflops),
        "fraction_of_gemm_limit": _finite(run.fraction_of_gemm_limit(result)),
    }


def to_json(run: BenchRun) -> Dict[str, object]:
    """The whole report as a JSON-ready dict following JSON_SCHEMA."""
    return {
        "schema": SCHEMA_NAME,
        "schema_version": SCHEMA_VERSION,
        "started": run.started,
        "finished": run.finished,
        "interrupted": run.interrupted,
        "planned": run.planned,
        "completed": len(run.results),
        "percentile_method": "nearest-rank",
        "time_unit": "ms",
        "settings": run.settings.to_dict(),
        "model": run.model,
        "environment": run.environment,
        "results": [result_to_dict(run, result) for result in run.results],
    }


def write_json(run: BenchRun, path: Path) -> None:
    Path(path).write_text(json.dumps(to_json(run), indent=2) + "\n")


# ---------------------------------------------------------------------------------------------
# CSV

CSV_FIELDS = ("stage", "variant", "backend", "precision", "device", "batch", "size", "prompts", "status",
              "reason", "iterations", "warmup_iterations") + tuple(f"{name}_ms" for name in STAT_FIELDS) + (
              "device_median_ms", "device_p99_ms", "throughput", "throughput_unit", "peak_rss_bytes",
              "peak_device_bytes", "baseline_median_ms", "speedup", "gflops", "fraction_of_gemm_limit")


def to_csv(run: BenchRun) -> str:
    """One row per result; phase medians follow as ``phase_<name>_median_ms`` columns."""
    entries = [result_to_dict(run, result) for result in run.results]
    phase_names = sorted({name for entry in entries for name in entry["phases_ms"]})
    fields = list(CSV_FIELDS) + [f"phase_{name}_median_ms" for name in phase_names]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for entry in entries:
        row = {key: entry[key] for key in CSV_FIELDS if key in entry}
        latency = entry["latency_ms"] or {}
        for name in STAT_FIELDS:
            row[f"{name}_ms"] = latency.get(name)
        device = entry["device_ms"] or {}
        row["device_median_ms"] = device.get("median")
        row["device_p99_ms"] = device.get("p99")
        row["peak_rss_bytes"] = entry["memory"]["peak_rss_bytes"]
        row["peak_device_bytes"] = entry["memory"]["peak_device_bytes"]
        for name in phase_names:
            phase = entry["phases_ms"].get(name)
            row[f"phase_{name}_median_ms"] = phase["median"] if phase else None
        writer.writerow({key: ("" if value is None else value) for key, value in row.items()})
    return buffer.getvalue()


def write_csv(run: BenchRun, path: Path) -> None:
    Path(path).write_text(to_csv(run))


# ---------------------------------------------------------------------------------------------
# Human table


def _ms(value: Optional[float]) -> str:
    if value is None:
        return "-"
    if value >= 100:
        return f"{value:.1f}"
    if value >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def _rate(value: Optional[float]) -> str:
    if value is None:
        return "-"
    if value >= 1000:
        return f"{value:,.0f}"
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def _cell(value) -> str:
    return "-" if value is None else str(value)


def _render(header: Sequence[str], rows: List[Sequence[str]], right: Sequence[bool]) -> List[str]:
    widths = [max(len(header[i]), *(len(row[i]) for row in rows)) if rows else len(header[i])
              for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(cell.rjust(w) if r else cell.ljust(w) for cell, w, r in zip(cells, widths, right)).rstrip()

    return [line(header), line(["-" * w for w in widths])] + [line(row) for row in rows]


def format_table(run: BenchRun, *, max_listed: int = 6) -> str:
    """Measured cases as a table (host latency in ms; GPU columns when CUDA ran), then the
    skipped and failed cases grouped by reason, then a short machine line."""
    lines: List[str] = []
    env = run.environment
    cpu = env.get("cpu") or {}
    gpu = env.get("gpu")
    versions = env.get("versions") or {}
    model = run.model
    weights = "RANDOM weights" if model.get("random_weights") else "trained weights"
    lines.append(f"clippy-rt bench: {model.get('arch')} ({model.get('kind')}, {weights}); "
                 f"percentiles nearest-rank; times in ms")
    machine = (f"machine: {cpu.get('model') or 'unknown CPU'}, {cpu.get('usable_threads')} usable threads, "
               f"torch threads {env.get('torch_threads')}")
    if env.get("load_average"):
        machine += f", load average {' / '.join(str(v) for v in env['load_average'])}"
    if gpu:
        machine += f"; GPU {gpu.get('name')} (driver {gpu.get('driver') or '?'}, CUDA {gpu.get('cuda_runtime')})"
    lines.append(machine)
    lines.append("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items() if v))

    ok = [r for r in run.results if r.status == "ok"]
    with_device = any(r.device_latency is not None for r in ok)
    header = ["stage", "variant", "backend", "prec", "device", "B", "size", "K", "iters", "median", "mean",
              "p90", "p99", "max", "throughput"]
    if with_device:
        header += ["gpu med", "h2d", "d2h"]
    header += ["baseline", "speedup", "peak RSS"]
    if with_device:
        header += ["peak dev"]
    with_gemm = any(run.fraction_of_gemm_limit(r) is not None for r in ok)
    if with_gemm:
        header += ["GFLOP/s", "GEMM limit"]
    rows = []
    for result in ok:
        entry = result_to_dict(run, result)
        latency = result.latency
        case = result.case
        is_baseline = case.baseline(run.settings.baseline) == case
        row = [case.stage, case.variant, case.backend, case.precision, case.device, _cell(case.batch),
               _cell(case.size), _cell(case.prompts), str(latency.count), _ms(latency.median), _ms(latency.mean),
               _ms(latency.p90), _ms(latency.p99), _ms(latency.max),
               f"{_rate(result.throughput)} {case.unit}/s"]
        if with_device:
            phases = result.phases
            row += [_ms(result.device_latency.median if result.device_latency else None),
                    _ms(phases["h2d"].median if "h2d" in phases else None),
                    _ms(phases["d2h"].median if "d2h" in phases else None)]
        speedup = entry["speedup"]
        row += [_ms(entry["baseline_median_ms"]),
                "base" if is_baseline and speedup is not None else (f"{speedup:.2f}x" if speedup else "-"),
                _bytes(result.peak_rss_bytes)]
        if with_device:
            row.append(_bytes(result.peak_device_bytes))
        if with_gemm:
            fraction = entry["fraction_of_gemm_limit"]
            row += [f"{result.gflops:.0f}" if result.gflops is not None else "-",
                    f"{100 * fraction:.0f} %" if fraction is not None else "-"]
        rows.append(row)
    right = [False] * 5 + [True] * (len(header) - 5)
    if rows:
        lines.append("")
        lines.extend(_render(header, rows, right))
    else:
        lines.append("")
        lines.append("no configuration ran")

    for status in ("skipped", "failed"):
        grouped: Dict[str, List[str]] = {}
        for result in run.results:
            if result.status == status:
                grouped.setdefault(result.reason or "no reason given", []).append(result.case.label())
        if not grouped:
            continue
        lines.append("")
        lines.append(f"{status}:")
        for reason, labels in grouped.items():
            shown = "; ".join(labels[:max_listed])
            more = f"; and {len(labels) - max_listed} more" if len(labels) > max_listed else ""
            lines.append(f"  {reason} ({len(labels)}): {shown}{more}")
    if run.interrupted:
        lines.append("")
        lines.append(f"interrupted: {len(run.results)} of {run.planned} configurations finished")
    return "\n".join(lines) + "\n"


def _bytes(value: Optional[int]) -> str:
    if value is None:
        return "-"
    return f"{value / 2**20:,.0f} MiB"


# ---------------------------------------------------------------------------------------------
# Markdown


def format_markdown(run: BenchRun) -> str:
    """Measured cases as a Markdown table (host latency in ms), then skipped and failed
    cases with their reasons; for results files."""
    ok = [r for r in run.results if r.status == "ok"]
    with_device = any(r.device_latency is not None for r in ok)
    header = ["stage", "variant", "backend", "precision", "device", "B", "size", "K", "iters", "median ms",
              "p90 ms", "p99 ms", "throughput"]
    if with_device:
        header.append("GPU median ms")
    header += ["baseline ms", "speedup"]
    with_gemm = any(run.fraction_of_gemm_limit(r) is not None for r in ok)
    if with_gemm:
        header += ["GFLOP/s", "% of GEMM limit"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for result in ok:
        entry = result_to_dict(run, result)
        case, latency = result.case, result.latency
        cells = [case.stage, case.variant, case.backend, case.precision, case.device, _cell(case.batch),
                 _cell(case.size), _cell(case.prompts), str(latency.count), _ms(latency.median),
                 _ms(latency.p90), _ms(latency.p99), f"{_rate(result.throughput)} {case.unit}/s"]
        if with_device:
            cells.append(_ms(result.device_latency.median if result.device_latency else None))
        speedup = entry["speedup"]
        cells += [_ms(entry["baseline_median_ms"]), f"{speedup:.2f}x" if speedup is not None else "-"]
        if with_gemm:
            fraction = entry["fraction_of_gemm_limit"]
            cells += [f"{result.gflops:.0f}" if result.gflops is not None else "-",
                      f"{100 * fraction:.0f}" if fraction is not None else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    if not ok:
        lines = ["No configuration ran."]
    for status in ("skipped", "failed"):
        rows = [r for r in run.results if r.status == status]
        if rows:
            lines.append("")
            lines.append(f"{status.capitalize()}:")
            grouped: Dict[str, List[str]] = {}
            for result in rows:
                grouped.setdefault(result.reason or "no reason given", []).append(result.case.label())
            for reason, labels in grouped.items():
                lines.append(f"- {reason}: {', '.join(labels)}")
    if run.interrupted:
        lines.append("")
        lines.append(f"Interrupted: {len(run.results)} of {run.planned} configurations finished.")
    return "\n".join(lines) + "\n"
