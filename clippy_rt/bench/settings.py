"""Benchmark settings, cases and results.

The matrix is device x backend x precision x batch x size x prompts x stage; the stages
and their variants are described in ``stages`` (the first variant of each stage is its
baseline variant). Backend names come from ``clippy_rt.backends``, precisions from ``clippy_rt.precisions`` (int8
exists for the exported runtimes only; the other backends skip it with their reason).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Mapping, Optional, Sequence, Tuple

import torch

from clippy_rt.backends import BACKENDS
from clippy_rt.errors import InputError
from clippy_rt.precisions import PRECISIONS

from .stats import LatencyStats
from .timer import TimingPolicy

STAGES = ("preprocess", "image", "text", "seg-head", "end-to-end", "stream", "gemm")
VARIANTS = {
    "preprocess": ("pil", "kernel"),
    "image": ("forward", "cuda-graph"),
    "text": ("cold", "cached"),
    "seg-head": ("reference", "torch", "triton", "native"),
    "end-to-end": ("reference-post", "segment"),
    "stream": ("stream",),
    "gemm": ("probe",),
}
BASELINE_VARIANT = {stage: variants[0] for stage, variants in VARIANTS.items()}
# Stages that run without an engine: their backend (and for preprocess, precision) is "-".
ENGINE_FREE = ("preprocess", "seg-head")
NOT_APPLICABLE = "-"




@dataclass(frozen=True)
class BenchSettings:
    """What to measure. ``model`` (a model, ONNX or engine directory, or "demo") or
    ``arch`` (random weights, made in a temporary directory): exactly one.

    ``onnx_dir`` / ``engine_dir``: an ONNX / TensorRT engine directory the onnxruntime /
    tensorrt backends use instead of the main input (so a model directory can run torch
    side by side with them; without ``onnx_dir`` a model directory is exported to ONNX
    once per run). ``sizes`` None: the model's configured input size. ``baseline`` None:
    no ratios. ``threads``: torch CPU threads during the run (None: unchanged).
    """

    model: Optional[str] = None
    arch: Optional[str] = None
    onnx_dir: Optional[str] = None
    engine_dir: Optional[str] = None
    backends: Tuple[str, ...] = ("torch",)
    precisions: Tuple[str, ...] = ("fp32",)
    devices: Tuple[str, ...] = ("cpu",)
    batches: Tuple[int, ...] = (1,)
    sizes: Optional[Tuple[int, ...]] = None
    prompts: Tuple[int, ...] = (21,)
    stages: Tuple[str, ...] = STAGES
    frame_size: Tuple[int, int] = (480, 640)
    policy: TimingPolicy = field(default_factory=TimingPolicy)
    cuda_graph: bool = False
    baseline: Optional[Tuple[str, str]] = ("torch", "fp32")
    seed: int = 0
    threads: Optional[int] = None

    def __post_init__(self) -> None:
        if (self.model is None) == (self.arch is None):
            raise InputError("give either a MODEL / ONNX_DIR / ENGINE_DIR path or --arch, not both or neither")
        if self.arch is not None:
            from clippy_rt.config import ARCHITECTURES

            if self.arch not in ARCHITECTURES:
                raise InputError(f"unknown architecture {self.arch!r}; choose one of {', '.join(ARCHITECTURES)}")
        _check_choices("backend", self.backends, BACKENDS)
        _check_choices("precision", self.precisions, PRECISIONS)
        _check_choices("stage", self.stages, STAGES)
        if not self.devices:
            raise InputError("give at least one device")
        for device in self.devices:
            _check_device(device)
        for name in ("batches", "prompts") + (("sizes",) if self.sizes is not None else ()):
            values = getattr(self, name)
            if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
                raise InputError(f"{name} must be positive integers, got {values!r}")
        if (len(self.frame_size) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1
                                             for v in self.frame_size)):
            raise InputError(f"frame_size must be (height, width) positive integers, got {self.frame_size!r}")
        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(self.threads, int)
                                         or self.threads < 1):
            raise InputError(f"threads must be a positive integer or None, got {self.threads!r}")
        if not isinstance(self.policy, TimingPolicy):
            raise TypeError(f"policy must be a TimingPolicy, got {type(self.policy).__name__}")
        if self.baseline is not None:
            if len(self.baseline) != 2 or self.baseline[0] not in BACKENDS or self.baseline[1] not in PRECISIONS:
                raise InputError(f"baseline must be (backend, precision) from {BACKENDS} x {PRECISIONS}, "
                                 f"got {self.baseline!r}")

    def to_dict(self) -> Dict[str, object]:
        return {
            "model": self.model, "arch": self.arch, "onnx_dir": self.onnx_dir, "engine_dir": self.engine_dir,
            "backends": list(self.backends),
            "precisions": list(self.precisions), "devices": list(self.devices),
            "batches": list(self.batches), "sizes": list(self.sizes) if self.sizes is not None else None,
            "prompts": list(self.prompts), "stages": list(self.stages), "frame_size": list(self.frame_size),
            "warmup_ms": self.policy.warmup_s * 1000.0, "duration_s": self.policy.duration_s,
            "min_iters": self.policy.min_iters, "max_iters": self.policy.max_iters,
            "cuda_graph": self.cuda_graph, "seed": self.seed, "threads": self.threads,
            "baseline": ({"backend": self.baseline[0], "precision": self.baseline[1]}
                         if self.baseline is not None else None),
        }


def _check_choices(what: str, values: Sequence[str], known: Sequence[str]) -> None:
    if not values:
        raise InputError(f"give at least one {what}")
    for value in values:
        if value not in known:
            raise InputError(f"unknown {what} {value!r}; choose from {', '.join(known)}")


def _check_device(device: str) -> None:
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise InputError(f"invalid device {device!r}; use cpu or cuda[:N]") from None
    if parsed.type not in ("cpu", "cuda"):
        raise InputError(f"device must be cpu or cuda[:N], got {device!r}")


@dataclass(frozen=True)
class Case:
    """One planned measurement. ``batch`` / ``size`` / ``prompts`` are None where they do
    not apply (text: no batch or size; preprocess and image: no prompts)."""

    stage: str
    variant: str
    backend: str
    precision: str
    device: str
    batch: Optional[int]
    size: Optional[int]
    prompts: Optional[int]

    @property
    def unit(self) -> str:
        return {"text": "prompts", "gemm": "products"}.get(self.stage, "images")

    @property
    def items(self) -> int:
        """Items processed by one iteration (prompts for the text tower, one product for
        the GEMM probe, images otherwise)."""
        return int({"text": self.prompts, "gemm": 1}.get(self.stage, self.batch))

    def baseline(self, baseline: Optional[Tuple[str, str]]) -> Optional["Case"]:
        """The case this one is compared with, or None without a baseline."""
        if baseline is None:
            return None
        backend = NOT_APPLICABLE if self.backend == NOT_APPLICABLE else baseline[0]
        precision = NOT_APPLICABLE if self.precision == NOT_APPLICABLE else baseline[1]
        return Case(self.stage, BASELINE_VARIANT[self.stage], backend, precision, self.device,
                    self.batch, self.size, self.prompts)

    def label(self) -> str:
        parts = [self.stage, self.variant, self.backend, self.precision, self.device]
        if self.batch is not None:
            parts.append(f"B{self.batch}")
        if self.size is not None:
            parts.append(f"{self.size}px")
        if self.prompts is not None:
            parts.append(f"K{self.prompts}")
        return " ".join(parts)


@dataclass(frozen=True)
class CaseResult:
    """The outcome of one case. ``status``: "ok", "skipped" or "failed" (with ``reason``).

    latency: host wall time per iteration; device_latency: CUDA-event time (CUDA only);
    phases: per named phase (see the stage descriptions); memory in bytes; flops: the
    floating-point operations of the matrix products in one iteration (image tower and GEMM
    probe on the CPU; ``clippy_rt.bench.gemm``), None elsewhere.
    """

    case: Case
    status: str
    reason: Optional[str] = None
    latency: Optional[LatencyStats] = None
    device_latency: Optional[LatencyStats] = None
    phases: Mapping[str, LatencyStats] = field(default_factory=dict)
    phase_clock: Optional[str] = None
    warmup_iters: int = 0
    elapsed_s: float = 0.0
    peak_rss_bytes: Optional[int] = None
    rss_scope: Optional[str] = None
    peak_device_bytes: Optional[int] = None
    flops: Optional[float] = None

    @property
    def gflops(self) -> Optional[float]:
        """The rate of ``flops`` at the median latency, in GFLOP/s; None without both."""
        if self.flops is None or self.latency is None or self.latency.median <= 0:
            return None
        return self.flops / (self.latency.median * 1e6)

    @property
    def throughput(self) -> Optional[float]:
        """Items per second (images/s, or prompts/s for the text tower); None unless ok."""
        if self.latency is None:
            return None
        return self.latency.throughput(self.case.items)


@dataclass(frozen=True)
class BenchRun:
    """A finished (or interrupted) run: settings, model, machine and one result per case."""

    settings: BenchSettings
    model: Dict[str, object]
    environment: Dict[str, object]
    results: Tuple[CaseResult, ...]
    planned: int
    interrupted: bool
    started: str
    finished: str

    def find(self, case: Case) -> Optional[CaseResult]:
        for result in self.results:
            if result.case == case:
                return result
        return None

    def gemm_limit_of(self, result: CaseResult) -> Optional[CaseResult]:
        """The fastest measured GEMM probe of ``result``'s precision, device, batch and size
        (the GEMM limit an image tower row is compared with), or None."""
        case = result.case
        probes = [r for r in self.results if r.status == "ok" and r.case.stage == "gemm" and r.gflops
                  and (r.case.precision, r.case.device, r.case.batch, r.case.size)
                  == (case.precision, case.device, case.batch, case.size)]
        return max(probes, key=lambda r: r.gflops) if probes else None

    def fraction_of_gemm_limit(self, result: CaseResult) -> Optional[float]:
        """An image tower row's GFLOP/s over its GEMM limit's; None for other rows or without a probe."""
        limit = self.gemm_limit_of(result) if result.case.stage == "image" else None
        if limit is None or result.gflops is None:
            return None
        return result.gflops / limit.gflops

    def baseline_of(self, result: CaseResult) -> Optional[CaseResult]:
        """The measured baseline of ``result``, or None (no baseline, or it did not run)."""
        reference = result.case.baseline(self.settings.baseline)
        if reference is None:
            return None
        found = self.find(reference)
        return found if found is not None and found.status == "ok" else None


class Unavailable(Exception):
    """A case cannot run on this machine or with this input; the message says why."""


class PreparationFailed(Exception):
    """Something a case depends on (an ONNX export) raised; the message says what."""
