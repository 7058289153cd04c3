"""Latency and throughput of every backend and pipeline stage (``clippy-rt bench``).

``run_benchmark(BenchSettings(...))`` runs a matrix and returns a ``BenchRun``;
``report.format_table`` / ``report.to_json`` / ``report.to_csv`` present it. The stages,
variants and baseline are described in ``stages``, the settings and results in ``settings``,
the matrix order in ``plan``, the run loop in ``run``, the statistics in ``stats``, the timing
loop in ``timer`` and the JSON layout in benchmarks/BENCH_SCHEMA.md.
"""

from .report import (JSON_SCHEMA, SCHEMA_VERSION, format_markdown, format_table, to_csv, to_json, write_csv,
                     write_json)
from .run import run_benchmark
from .settings import STAGES, BenchRun, BenchSettings, Case, CaseResult
from .stats import LatencyStats, nearest_rank_percentile, summarize
from .timer import Measurement, TimingPolicy, measure

__all__ = [
    "run_benchmark", "BenchSettings", "BenchRun", "Case", "CaseResult", "STAGES", "TimingPolicy",
    "Measurement", "measure", "LatencyStats", "summarize", "nearest_rank_percentile", "format_table",
    "format_markdown", "to_json", "to_csv", "write_json", "write_csv", "JSON_SCHEMA", "SCHEMA_VERSION",
]
