"""The benchmark matrix: device x backend x precision x batch x size x prompts x stage.

Stages and their variants (the first variant of each stage is its baseline variant):

- ``preprocess``: B uint8 frames of ``frame_size`` -> normalised float32 [B, 3, S, S].
  ``pil``: the engine's host path (PIL bicubic resize, normalise, on the CPU);
  ``kernel``: ``clippy_rt.kernels.preprocess.preprocess`` on the device (Triton on CUDA,
  its torch reference on the CPU; on CUDA the uint8 upload is the ``h2d`` phase).
  Independent of backend and precision (both reported as "-").
- ``image``: the image tower on a float32 batch [B, 3, S, S] held in host memory.
  ``forward``: ``Engine._image_forward``; on CUDA with the torch backend the phases are
  ``h2d`` (upload), ``compute`` (the tower) and ``d2h`` (patch features and embedding
  back to the host); ``cuda-graph`` (with ``--cuda-graph``; torch on CUDA only): the same
  with the tower captured once in a CUDA graph and replayed.
- ``text``: ``Engine.encode_text`` on K prompts (tokenisation included). ``cold``: the
  text cache is cleared (untimed) before every iteration; ``cached``: every prompt hits
  the cache. Throughput in prompts/s; batch and size do not apply.
- ``seg-head``: random normalised patch features [B, S/p, S/p, D] and text embeddings
  [K, D] in the precision's dtype -> labels (and scores) at S x S. ``reference``: the
  reference procedure (upsample all D channels, then the dot product, then argmax);
  ``torch``: the fused head in torch; ``triton``: the Triton kernels (CUDA only);
  ``native``: the native CUDA kernel (CUDA only). Backend "-".
- ``end-to-end``: ``Engine.segment`` on B uint8 frames of ``frame_size`` with K prompts
  whose embeddings are cached (a stream with a fixed vocabulary); labels come back at
  the frame size. ``segment``: the engine's own path; ``reference-post``: the same stages
  with the reference procedure as post-processing (the baseline combination only).
  Phases: ``preprocess``, ``text``, ``image``, ``postprocess`` (host times).
- ``stream``: ``Engine.stream`` (batch B, K prompts) called with B uint8 frames of
  ``frame_size`` per iteration, labels and scores back on the host; on CUDA with the
  torch backend, CUDA graphs captured during the warm-up (``clippy_rt.bench.stream_stage``).

Baseline: per stage, the baseline variant on the baseline backend and precision (default
torch, fp32), same device, batch, size and prompt count. The baseline combination is
always measured. A configuration that cannot run here (no CUDA, no TensorRT, a missing
exporter, not enough memory, an engine profile too small) is *skipped* with its reason;
one that raises anything else is *failed* with the error; the rest goes on either way.
"""

from __future__ import annotations

import datetime
import gc
import importlib
import importlib.util
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from clippy_rt.errors import BackendUnavailableError, ClippyError, InputError, ModelDirError

from .stats import LatencyStats, summarize
from .timer import TimingPolicy, is_cuda, measure, peak_device_bytes, peak_rss_bytes, reset_peak_memory

STAGES = ("preprocess", "image", "text", "seg-head", "end-to-end", "stream")
BACKENDS = ("torch", "onnxruntime", "tensorrt")
PRECISIONS = ("fp32", "fp16", "bf16")
VARIANTS = {
    "preprocess": ("pil", "kernel"),
    "image": ("forward", "cuda-graph"),
    "text": ("cold", "cached"),
    "seg-head": ("reference", "torch", "triton", "native"),
    "end-to-end": ("reference-post", "segment"),
    "stream": ("stream",),
}
BASELINE_VARIANT = {stage: variants[0] for stage, variants in VARIANTS.items()}
# Stages that run without an engine: their backend (and for preprocess, precision) is "-".
ENGINE_FREE = ("preprocess", "seg-head")
NOT_APPLICABLE = "-"
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# Fraction of the free memory the reference procedure may plan to use before it is skipped.
_MEMORY_FRACTION = 0.5


# ---------------------------------------------------------------------------------------------
# Settings, cases, results


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
        return "prompts" if self.stage == "text" else "images"

    @property
    def items(self) -> int:
        """Items processed by one iteration (prompts for the text tower, images otherwise)."""
        return int(self.prompts if self.stage == "text" else self.batch)

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
    phases: per named phase (see the stage descriptions); memory in bytes.
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


# ---------------------------------------------------------------------------------------------
# The model source


@dataclass(frozen=True)
class ModelSource:
    """A resolved input: ``kind`` is "model", "onnx" or "engine"."""

    path: Path
    kind: str
    config: object

    def describe(self, arch: Optional[str]) -> Dict[str, object]:
        return {"path": None if arch else str(self.path), "kind": self.kind, "arch": self.config.arch,
                "random_weights": bool(self.config.random_weights), "source": self.config.source,
                "generated_from_arch": arch}


def resolve_source(model: Optional[str], arch: Optional[str], workdir: Path, seed: int = 0) -> ModelSource:
    """A model / ONNX / engine directory (or random weights of ``arch`` written under
    ``workdir``). Raises ModelDirError for a missing or unrecognised directory."""
    from clippy_rt.api import resolve_model_path
    from clippy_rt.config import ClippyConfig

    if arch is not None:
        from clippy_rt.random_init import random_init

        path = random_init(arch, workdir / f"random-{arch}", seed=seed)
        return ModelSource(Path(path), "model", ClippyConfig.load(Path(path) / "config.json"))
    path = resolve_model_path(model)
    if not path.exists():
        raise ModelDirError(f"no such model, ONNX or engine directory: {path}")
    if not path.is_dir():
        raise ModelDirError(f"{path} is not a directory (expected a model, ONNX or engine directory)")
    if (path / "weights.safetensors").is_file():
        kind = "model"
    elif (path / "engine.json").is_file():
        kind = "engine"
    elif (path / "manifest.json").is_file():
        kind = "onnx"
    else:
        raise ModelDirError(f"{path} is not a model, ONNX or engine directory "
                            "(no weights.safetensors, manifest.json or engine.json)")
    return ModelSource(path, kind, _read_config(path, kind))


def _read_config(path: Path, kind: str):
    from clippy_rt.config import ClippyConfig

    if (path / "config.json").is_file():
        return ClippyConfig.load(path / "config.json")
    sidecar = path / ("engine.json" if kind == "engine" else "manifest.json")
    try:
        data = json.loads(sidecar.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelDirError(f"cannot read {sidecar}: {exc}") from None
    if not isinstance(data, dict) or "config" not in data:
        raise ModelDirError(f"{sidecar} holds no model config")
    return ClippyConfig.from_dict(data["config"])


# ---------------------------------------------------------------------------------------------
# Planning


def _backend_reachable(backend: str, kind: str, settings: BenchSettings) -> bool:
    """Whether ``backend`` can load from the input of kind ``kind`` (plus --onnx-dir / --engine-dir)."""
    if backend == "torch":
        return kind == "model"
    if backend == "onnxruntime":
        return kind in ("model", "onnx") or settings.onnx_dir is not None
    return kind == "engine" or settings.engine_dir is not None


def plan_cases(settings: BenchSettings, config, kind: str = "model") -> List[Case]:
    """Every case of the matrix in run order (grouped so each engine loads once).

    The baseline combination is added when the input can run it (``kind`` is the input's
    kind: "model", "onnx" or "engine"). Raises InputError for a size that is not a
    multiple of the patch size.
    """
    patch = config.image.patch_size
    sizes = tuple(settings.sizes) if settings.sizes is not None else (config.image.image_size,)
    for size in sizes:
        if size % patch:
            raise InputError(f"size {size} is not a multiple of the model's patch size {patch}")
    combos = [(b, p) for b in settings.backends for p in settings.precisions]
    precisions = list(settings.precisions)
    if settings.baseline is not None and _backend_reachable(settings.baseline[0], kind, settings):
        if settings.baseline not in combos:
            combos.insert(0, settings.baseline)
        if settings.baseline[1] not in precisions:
            precisions.insert(0, settings.baseline[1])
    stages = set(settings.stages)
    cases: List[Case] = []
    for device in settings.devices:
        if "preprocess" in stages:
            for batch in settings.batches:
                for size in sizes:
                    for variant in VARIANTS["preprocess"]:
                        cases.append(Case("preprocess", variant, NOT_APPLICABLE, NOT_APPLICABLE, device,
                                          batch, size, None))
        if "seg-head" in stages:
            for precision in precisions:
                baseline_only = precision not in settings.precisions
                for batch in settings.batches:
                    for size in sizes:
                        for k in settings.prompts:
                            for variant in VARIANTS["seg-head"]:
                                if baseline_only and variant != BASELINE_VARIANT["seg-head"]:
                                    continue
                                cases.append(Case("seg-head", variant, NOT_APPLICABLE, precision, device,
                                                  batch, size, k))
        for backend, precision in combos:
            is_baseline = settings.baseline == (backend, precision)
            if "image" in stages:
                variants = ["forward"] + (["cuda-graph"] if settings.cuda_graph else [])
                for batch in settings.batches:
                    for size in sizes:
                        for variant in variants:
                            cases.append(Case("image", variant, backend, precision, device, batch, size, None))
            if "text" in stages:
                for k in settings.prompts:
                    for variant in VARIANTS["text"]:
                        cases.append(Case("text", variant, backend, precision, device, None, None, k))
            if "end-to-end" in stages:
                variants = (["reference-post"] if is_baseline else []) + ["segment"]
                for batch in settings.batches:
                    for size in sizes:
                        for k in settings.prompts:
                            for variant in variants:
                                cases.append(Case("end-to-end", variant, backend, precision, device,
                                                  batch, size, k))
            if "stream" in stages:
                for batch in settings.batches:
                    for size in sizes:
                        for k in settings.prompts:
                            cases.append(Case("stream", "stream", backend, precision, device, batch, size, k))
    return list(dict.fromkeys(cases))


def bench_prompts(count: int) -> List[str]:
    """``count`` distinct prompts: the 21 VOC class prompts first, then numbered objects."""
    from clippy_rt.datasets.voc import voc_prompts

    prompts = [texts[0] for texts in voc_prompts().values()]
    prompts += [f"a photo of object number {i}" for i in range(len(prompts), count)]
    return prompts[:count]


# ---------------------------------------------------------------------------------------------
# Engines


class _Engines:
    """Loads one engine at a time (the previous one is released), remembering failures."""

    def __init__(self, source: ModelSource, workdir: Path, onnx_precisions: Sequence[str],
                 onnx_dir: Optional[ModelSource] = None, engine_dir: Optional[ModelSource] = None) -> None:
        self.source = source
        self.workdir = workdir
        self.onnx_precisions = tuple(onnx_precisions)
        self.onnx_source = onnx_dir
        self.engine_source = engine_dir
        self._key: Optional[Tuple[str, str, str]] = None
        self._engine = None
        self._failures: Dict[Tuple[str, str, str], BaseException] = {}
        self._onnx_dir: Optional[Path] = None
        self._onnx_error: Optional[BaseException] = None

    def get(self, device: str, backend: str, precision: str):
        key = (device, backend, precision)
        if key in self._failures:
            raise self._failures[key]
        if key == self._key:
            return self._engine
        self.release()
        try:
            engine = self._load(device, backend, precision)
        except Exception as exc:  # remembered and reported per case; the rest goes on
            self._failures[key] = exc
            raise
        self._key, self._engine = key, engine
        return engine

    def release(self) -> None:
        self._key, self._engine = None, None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _load(self, device: str, backend: str, precision: str):
        import clippy_rt

        kind = self.source.kind
        if backend == "torch":
            if kind != "model":
                raise Unavailable(f"the torch backend needs a model directory; {self.source.path} is an "
                                  f"{'ONNX' if kind == 'onnx' else 'engine'} directory")
            return clippy_rt.load(self.source.path, backend="torch", device=device, precision=precision)
        if backend == "onnxruntime":
            if self.onnx_source is not None:
                return clippy_rt.load(self.onnx_source.path, backend="onnxruntime", device=device,
                                      precision=precision)
            if kind == "engine":
                raise Unavailable("the onnxruntime backend needs an ONNX or model directory, "
                                  "not a TensorRT engine directory")
            path = self._onnx_path() if kind == "model" else self.source.path
            return clippy_rt.load(path, backend="onnxruntime", device=device, precision=precision)
        if self.engine_source is not None:
            return clippy_rt.load(self.engine_source.path, backend="tensorrt", device=device, precision=precision)
        if kind != "engine":
            raise Unavailable("the tensorrt backend needs an engine directory (ENGINE_DIR, made by "
                              "`clippy-rt build`); engines are not built during a benchmark")
        return clippy_rt.load(self.source.path, backend="tensorrt", device=device, precision=precision)

    def _onnx_path(self) -> Path:
        """Export the model directory to ONNX once per run (fp16 graphs when asked for)."""
        if self._onnx_error is not None:
            raise self._onnx_error
        if self._onnx_dir is not None:
            return self._onnx_dir
        try:
            self._onnx_dir = self._export()
        except Exception as exc:
            self._onnx_error = exc
            raise
        return self._onnx_dir

    def _export(self) -> Path:
        try:
            spec = importlib.util.find_spec("clippy_rt.export.onnx")
        except ModuleNotFoundError:
            spec = None
        if spec is None:
            raise Unavailable("ONNX export is not available in this install (no clippy_rt.export.onnx); "
                              "give an ONNX_DIR made by `clippy-rt export` instead")
        module = importlib.import_module("clippy_rt.export.onnx")
        export = getattr(module, "export_onnx", None)
        if export is None:
            raise Unavailable("clippy_rt.export.onnx has no export_onnx(); give an ONNX_DIR instead")
        out = self.workdir / "onnx"
        # One parity check at the model's own size keeps the export short; `clippy-rt export`
        # is the place for the full check.
        try:
            export(self.source.path, out, fp16="fp16" in self.onnx_precisions,
                   check_sizes=[self.source.config.image.image_size], check_batches=(1,))
        except ImportError as exc:
            raise Unavailable(f"the ONNX export needs a package that is not installed: {exc}") from exc
        except Exception as exc:  # reported as this backend's failure; torch still runs
            raise PreparationFailed(f"the ONNX export of {self.source.path} failed: {_reason_of(exc)}") from exc
        return out


# ---------------------------------------------------------------------------------------------
# Stage functions: each returns (fn(marks), setup or None)


Timed = Tuple[Callable, Optional[Callable[[], None]]]


def _frames(batch: int, frame_size: Tuple[int, int], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (batch, frame_size[0], frame_size[1], 3), dtype=np.uint8)


def _require_cuda(device: str, what: str) -> None:
    if not is_cuda(device):
        raise Unavailable(f"{what} needs a CUDA device")


def _preprocess_case(case: Case, config, settings: BenchSettings) -> Timed:
    from clippy_rt.images import prepare_batch

    frames = _frames(case.batch, settings.frame_size, settings.seed)
    cfg = config.image
    if case.variant == "pil":
        images = list(frames)

        def run_pil(marks):
            prepare_batch(images, case.size, mode="squash", mean=cfg.mean, std=cfg.std, patch_size=cfg.patch_size)

        return run_pil, None
    try:
        from clippy_rt.kernels.preprocess import preprocess
    except ImportError as exc:
        raise Unavailable(f"the preprocess kernel is not available: {exc}") from None
    device = torch.device(case.device)
    host = torch.from_numpy(frames)
    if device.type == "cuda":
        host = host.pin_memory()

        def run_kernel(marks):
            on_device = host.to(device, non_blocking=True)
            marks("h2d")
            preprocess(on_device, (case.size, case.size), cfg.mean, cfg.std)
            marks("compute")

        return run_kernel, None

    def run_kernel_cpu(marks):
        preprocess(host, (case.size, case.size), cfg.mean, cfg.std)

    return run_kernel_cpu, None


def _image_case(case: Case, engine, settings: BenchSettings) -> Timed:
    generator = torch.Generator().manual_seed(settings.seed)
    pixels = torch.randn(case.batch, 3, case.size, case.size, generator=generator)
    device = torch.device(case.device)
    split_transfers = device.type == "cuda" and case.backend == "torch"
    if case.variant == "cuda-graph":
        _require_cuda(case.device, "CUDA graph capture")
        if case.backend != "torch":
            raise Unavailable("CUDA graphs are captured for the torch backend only")
        return _cuda_graph_case(engine, pixels.pin_memory(), device)
    if not split_transfers:
        # ONNX Runtime and TensorRT take host tensors and do their own transfers.
        def run_forward(marks):
            engine._image_forward(pixels)

        return run_forward, None
    host = pixels.pin_memory()

    def run_split(marks):
        on_device = host.to(device, non_blocking=True)
        marks("h2d")
        patch, pooled = engine._image_forward(on_device)
        marks("compute")
        patch.to("cpu")
        pooled.to("cpu")
        marks("d2h")

    return run_split, None


def _cuda_graph_case(engine, host: torch.Tensor, device: torch.device) -> Timed:
    static_input = host.to(device)
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    # Capture needs the allocator and any lazy initialisation warmed up on a side stream.
    with torch.cuda.stream(stream):
        for _ in range(3):
            engine._image_forward(static_input)
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_patch, static_pooled = engine._image_forward(static_input)

    def run_graph(marks):
        static_input.copy_(host, non_blocking=True)
        marks("h2d")
        graph.replay()
        marks("compute")
        static_patch.to("cpu")
        static_pooled.to("cpu")
        marks("d2h")

    return run_graph, None


def _text_case(case: Case, engine) -> Timed:
    prompts = bench_prompts(case.prompts)

    def run_text(marks):
        engine.encode_text(prompts)

    if case.variant == "cold":
        return run_text, engine.clear_text_cache
    engine.encode_text(prompts)
    return run_text, None


def _check_memory(device: str, needed: int, what: str) -> None:
    if is_cuda(device):
        free, _ = torch.cuda.mem_get_info(torch.device(device))
    else:
        free = _available_host_memory()
        if free is None:
            return
    if needed > _MEMORY_FRACTION * free:
        raise Unavailable(f"{what} needs about {needed / 2**30:.1f} GiB, more than half of the "
                          f"{free / 2**30:.1f} GiB free on {device}")


def _available_host_memory() -> Optional[int]:
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _seg_head_case(case: Case, config, settings: BenchSettings) -> Timed:
    # The package re-exports the function under the module's name; import the module itself.
    seg_head_module = importlib.import_module("clippy_rt.kernels.seg_head")
    device = torch.device(case.device)
    dtype = _DTYPES[case.precision]
    grid = case.size // config.image.patch_size
    dim = config.embed_dim
    generator = torch.Generator().manual_seed(settings.seed)
    patch = torch.nn.functional.normalize(torch.randn(case.batch, grid, grid, dim, generator=generator), dim=-1)
    text = torch.nn.functional.normalize(torch.randn(case.prompts, dim, generator=generator), dim=-1)
    out_size = (case.size, case.size)
    if case.variant == "reference":
        # The upsampled [B, D, S, S] float32 map plus the [B, K, S, S] logits.
        needed = 4 * case.batch * case.size * case.size * (dim + case.prompts)
        _check_memory(case.device, needed, "the reference procedure")
    elif case.variant == "triton":
        _require_cuda(case.device, "the Triton seg head")
    elif case.variant == "native":
        _require_cuda(case.device, "the native CUDA seg head")
    patch = patch.to(device, dtype)
    text = text.to(device, dtype)

    if case.variant == "reference":
        procedure = seg_head_module.seg_head_reference_procedure

        def run_reference(marks):
            procedure(patch, text, out_size)

        return run_reference, None
    if case.variant == "native":
        try:
            native = importlib.import_module("clippy_rt.kernels.native")
        except ImportError as exc:
            raise Unavailable(f"the native CUDA seg head is not available: {exc}") from None
        kernel = getattr(native, "seg_head_native", None)
        if kernel is None:
            raise Unavailable("clippy_rt.kernels.native has no seg_head_native")

        def run_native(marks):
            kernel(patch, text, out_size, return_scores=True)

        return run_native, None
    head = seg_head_module.seg_head
    backend = "triton" if case.variant == "triton" else "torch"

    def run_fused(marks):
        head(patch, text, out_size, return_scores=True, backend=backend)

    return run_fused, None


def _end_to_end_case(case: Case, engine, settings: BenchSettings) -> Timed:
    frames = list(_frames(case.batch, settings.frame_size, settings.seed))
    prompts = bench_prompts(case.prompts)
    engine.encode_text(prompts)
    if case.variant == "segment":
        def run_segment(marks):
            results = engine.segment(frames, prompts, size=case.size)
            for name, value in results[0].timings_ms.items():
                marks.add(name, value)

        return run_segment, None

    from clippy_rt.kernels.seg_head import seg_head_reference_procedure

    dim = engine.config.embed_dim
    height, width = settings.frame_size
    _check_memory(case.device, 4 * height * width * (dim + case.prompts),
                  "the reference procedure at the frame size")

    def run_reference_post(marks):
        # The stages of Engine.segment, timed the same way, with the reference procedure
        # (upsample all D channels, then the dot product) as post-processing.
        clock = _HostSplit()
        pixels, prepared = engine.prepare(frames, case.size)
        marks.add("preprocess", clock.split())
        text = engine.encode_text(prompts)
        marks.add("text", clock.split())
        features = engine.encode_image(pixels)
        if features.patch.is_cuda:
            torch.cuda.synchronize(features.patch.device)
        marks.add("image", clock.split())
        for index, item in enumerate(prepared):
            _, logits = seg_head_reference_procedure(features.patch[index:index + 1].to(text.device), text,
                                                     item.out_size)
            labels, scores = logits.argmax(dim=1), logits.max(dim=1).values
            labels.cpu()
            scores.cpu()
        marks.add("postprocess", clock.split())

    return run_reference_post, None


class _HostSplit:
    def __init__(self) -> None:
        import time

        self._time = time.perf_counter
        self._last = self._time()

    def split(self) -> float:
        now = self._time()
        elapsed, self._last = (now - self._last) * 1000.0, now
        return elapsed


# ---------------------------------------------------------------------------------------------
# Running


def _status_of(exc: BaseException) -> str:
    if isinstance(exc, (Unavailable, BackendUnavailableError, ImportError, InputError)):
        return "skipped"
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return "skipped"
    return "failed"


def _reason_of(exc: BaseException) -> str:
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    if isinstance(exc, (Unavailable, PreparationFailed, ClippyError)):
        return first or type(exc).__name__
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return "out of CUDA memory"
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


class Runner:
    """Runs the planned cases of ``settings`` against ``source``; see the module doc."""

    def __init__(self, settings: BenchSettings, source: ModelSource, workdir: Path) -> None:
        self.settings = settings
        self.source = source
        self.cases = plan_cases(settings, source.config, source.kind)
        onnx_precisions = list(settings.precisions) if "onnxruntime" in settings.backends else []
        extra = {}
        for name, kind in (("onnx_dir", "onnx"), ("engine_dir", "engine")):
            path = getattr(settings, name)
            if path is not None:
                extra[name] = resolve_source(path, None, workdir)
                if extra[name].kind != kind:
                    raise ModelDirError(f"--{name.replace('_', '-')} {path} is a {extra[name].kind} directory, "
                                        f"not an {'ONNX' if kind == 'onnx' else 'engine'} directory")
        self._engines = _Engines(source, workdir, onnx_precisions, **extra)

    def run_case(self, case: Case) -> CaseResult:
        """Measure one case; never raises for a case that cannot run (KeyboardInterrupt aside)."""
        scope = reset_peak_memory(case.device if _cuda_usable(case.device) else None)
        try:
            fn, setup = self._build(case)
            measurement = measure(fn, self.settings.policy, device=case.device, setup=setup)
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # every other error becomes this case's reported outcome
            return CaseResult(case, _status_of(exc), _reason_of(exc))
        finally:
            gc.collect()
        result = CaseResult(
            case, "ok",
            latency=summarize(measurement.host_ms),
            device_latency=summarize(measurement.device_ms) if measurement.device_ms else None,
            phases={name: summarize(values) for name, values in measurement.phases_ms.items()},
            phase_clock=measurement.phase_clock if measurement.phases_ms else None,
            warmup_iters=measurement.warmup_iters,
            elapsed_s=measurement.elapsed_s,
            peak_rss_bytes=peak_rss_bytes(),
            rss_scope=scope,
            peak_device_bytes=peak_device_bytes(case.device),
        )
        return result

    def _build(self, case: Case) -> Timed:
        if is_cuda(case.device) and not torch.cuda.is_available():
            raise Unavailable("CUDA is not available on this machine")
        if case.stage == "preprocess":
            return _preprocess_case(case, self.source.config, self.settings)
        if case.stage == "seg-head":
            return _seg_head_case(case, self.source.config, self.settings)
        engine = self._engines.get(case.device, case.backend, case.precision)
        if case.stage == "image":
            return _image_case(case, engine, self.settings)
        if case.stage == "text":
            return _text_case(case, engine)
        if case.stage == "stream":
            from .stream_stage import stream_case

            return stream_case(case, engine, _frames(case.batch, self.settings.frame_size, self.settings.seed),
                               bench_prompts(case.prompts))
        return _end_to_end_case(case, engine, self.settings)

    def close(self) -> None:
        self._engines.release()


def _cuda_usable(device: str) -> bool:
    return is_cuda(device) and torch.cuda.is_available()


def run_benchmark(settings: BenchSettings, *, wrap: Optional[Callable[[Sequence[Case]], Iterable[Case]]] = None,
                  environment: Optional[Dict[str, object]] = None) -> BenchRun:
    """Resolve the model, plan the matrix and run it. ``wrap`` wraps the case list (a
    progress bar). Ctrl-C stops the run and returns what finished (``interrupted``).

    Raises ModelDirError / InputError before anything runs for a bad path or setting.
    """
    from .environment import collect_environment

    started = _now()
    interrupted = False
    results: List[CaseResult] = []
    threads_before = torch.get_num_threads()
    with tempfile.TemporaryDirectory(prefix="clippy-rt-bench-") as tmp:
        source = resolve_source(settings.model, settings.arch, Path(tmp), seed=settings.seed)
        runner = Runner(settings, source, Path(tmp))
        cases = runner.cases
        try:
            if settings.threads is not None:
                torch.set_num_threads(settings.threads)
            env = environment if environment is not None else collect_environment()
            for case in (wrap(cases) if wrap is not None else cases):
                results.append(runner.run_case(case))
        except KeyboardInterrupt:
            interrupted = True
        finally:
            runner.close()
            torch.set_num_threads(threads_before)
    return BenchRun(settings=settings, model=source.describe(settings.arch), environment=env,
                    results=tuple(results), planned=len(cases), interrupted=interrupted,
                    started=started, finished=_now())


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
