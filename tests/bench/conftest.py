"""A small benchmark matrix on the tiny model, run once for the runner, report and CLI tests."""

from __future__ import annotations

import importlib.util

import pytest

from clippy_rt.bench import STAGES, BenchSettings, run_benchmark
from clippy_rt.bench.timer import TimingPolicy

# Two timed iterations, no warm-up: enough to exercise every path in a fraction of a second.
FAST = TimingPolicy(warmup_s=0.0, duration_s=0.0, min_iters=2)


def _onnx_export_available() -> bool:
    try:
        return (importlib.util.find_spec("clippy_rt.export.onnx") is not None
                and importlib.util.find_spec("onnxruntime") is not None)
    except ModuleNotFoundError:
        return False


def _fast_settings(model_dir, **overrides) -> BenchSettings:
    values = dict(model=str(model_dir), backends=("torch",), batches=(2,), sizes=(32,), prompts=(3,),
                  stages=STAGES, frame_size=(24, 40), policy=FAST, threads=1)
    values.update(overrides)
    return BenchSettings(**values)


@pytest.fixture(scope="session")
def cpu_run(tiny_model_dir):
    """Every stage and variant on the CPU backends (torch, and ONNX Runtime through an export)."""
    return run_benchmark(_fast_settings(tiny_model_dir, backends=("torch", "onnxruntime")))


@pytest.fixture(scope="session")
def fast_settings():
    """fast_settings(model_dir, **overrides) -> BenchSettings with a two-iteration policy."""
    return _fast_settings


@pytest.fixture(scope="session")
def onnx_available() -> bool:
    """Whether the ONNX exporter and ONNX Runtime are installed."""
    return _onnx_export_available()
