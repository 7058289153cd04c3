"""Build TensorRT engines from an ONNX directory (TensorRT Python API, no ``trtexec``).

An engine directory is self-contained::

    config.json, spiece.model (or tokenizer.json)   copied from the ONNX directory
    vocabulary.json                                 copied too, where the ONNX directory has one
    image.plan, text.plan                           serialized engines, one per tower
    engine.json                                     the sidecar (see ``engine_sidecar``)

Engines are tied to the TensorRT version and the GPU model they were built with: the
runtime (``clippy_rt.backends.tensorrt``) compares the sidecar with the running TensorRT
and GPU and refuses a mismatch with the command that rebuilds the engines.

Precision. TensorRT 10 prefers strongly typed networks, whose tensor types come from the
ONNX graph: with ``fp16`` and an ONNX directory exported with ``--fp16`` the float16 graphs
(norms already kept in float32 by the exporter) are built strongly typed. Otherwise, and on
TensorRT 8.6, the float32 graph is built weakly typed with ``BuilderFlag.FP16``, and
TensorRT picks per-layer precisions. Without ``fp16`` the float32 graph is built as is
(TensorRT may use TF32 on Ampere and later, as it does by default).

Dynamic shapes: one optimisation profile per engine, covering every dynamic input of the
tower (``io_spec``): [batch, 3, size, size] for the image tower (non-square sizes anywhere
inside the min/max box work), [prompts, length] for both text inputs.

Every TensorRT import is lazy; the pure parts (ranges, profiles, the sidecar and its
compatibility check) are importable and testable without TensorRT.
"""

from __future__ import annotations

import datetime
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Tuple

from clippy_rt.config import ClippyConfig
from clippy_rt.errors import BackendUnavailableError, InputError, ModelDirError
from clippy_rt.formats.atomic import atomic_directory, atomic_write_bytes, check_output_dir
from clippy_rt.formats.engine_dir import (PLAN_SUFFIX, SIDECAR_FILE, SIDECAR_FORMAT, SIDECAR_VERSION,
                                          RuntimeEnvironment, current_environment, import_tensorrt)
from clippy_rt.formats.io_spec import TOWERS, GraphSpec
from clippy_rt.formats.model_dir import CONFIG_FILE, VOCABULARY_FILE
from clippy_rt.formats.onnx_dir import read_onnx_dir, sha256_file


def trt_major(version: str) -> int:
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        return 0


@dataclass(frozen=True)
class Range:
    """A min <= opt <= max range of one dimension, for an optimisation profile."""

    min: int
    opt: int
    max: int

    def __post_init__(self) -> None:
        values = (self.min, self.opt, self.max)
        if any(not isinstance(v, int) or isinstance(v, bool) or v < 1 for v in values):
            raise InputError(f"range values must be positive integers, got {values}")
        if not self.min <= self.opt <= self.max:
            raise InputError(f"range must satisfy min <= opt <= max, got {self.min},{self.opt},{self.max}")

    @classmethod
    def parse(cls, text: str, what: str) -> "Range":
        """``"1,4,8"`` -> Range(1, 4, 8); ``"8"`` -> Range(8, 8, 8)."""
        try:
            values = [int(part) for part in str(text).split(",")]
        except ValueError:
            raise InputError(f"--{what} takes MIN,OPT,MAX (or one value), got {text!r}") from None
        if len(values) == 1:
            values = values * 3
        if len(values) != 3:
            raise InputError(f"--{what} takes MIN,OPT,MAX (or one value), got {text!r}")
        return cls(*values)

    def to_list(self) -> List[int]:
        return [self.min, self.opt, self.max]


@dataclass(frozen=True)
class BuildSettings:
    """What ``clippy-rt build`` asks of TensorRT. ``size`` is the image side in pixels
    (min/opt/max apply to height and width alike); ``length`` the prompt length in tokens."""

    fp16: bool = False
    batch: Range = field(default_factory=lambda: Range(1, 1, 8))
    size: Optional[Range] = None
    prompts: Range = field(default_factory=lambda: Range(1, 32, 256))
    length: Optional[Range] = None
    workspace_mb: int = 4096
    dla_core: Optional[int] = None
    gpu_fallback: bool = False
    timing_cache: Optional[Path] = None
    device: int = 0

    def resolved(self, config: ClippyConfig) -> "BuildSettings":
        """Fill the model-dependent defaults and check the ranges against the model."""
        from dataclasses import replace

        patch = config.image.patch_size
        size = self.size or Range(config.image.image_size, config.image.image_size, 2 * config.image.image_size)
        for value in size.to_list():
            if value % patch:
                raise InputError(f"--size values must be multiples of the patch size {patch}, got {size.to_list()}")
        length = self.length or Range(1, min(16, config.text.max_length), config.text.max_length)
        if length.max > config.text.max_length:
            raise InputError(f"--length max {length.max} exceeds the model's max_length {config.text.max_length}")
        if not isinstance(self.workspace_mb, int) or self.workspace_mb < 1:
            raise InputError(f"--workspace must be a positive number of MB, got {self.workspace_mb!r}")
        if self.gpu_fallback and self.dla_core is None:
            raise InputError("--gpu-fallback only applies with --dla-core")
        return replace(self, size=size, length=length)


def profile_shapes(graph: GraphSpec, settings: BuildSettings) -> Dict[str, Tuple[Tuple[int, ...], ...]]:
    """{input name: (min shape, opt shape, max shape)} for ``graph`` (settings resolved)."""
    ranges = {"batch": settings.batch, "height": settings.size, "width": settings.size,
              "prompts": settings.prompts, "length": settings.length}
    shapes = {}
    for spec in graph.inputs:
        per_level = []
        for level in ("min", "opt", "max"):
            dims = {name: getattr(r, level) for name, r in ranges.items()}
            per_level.append(spec.shape(dims))
        shapes[spec.name] = tuple(per_level)
    return shapes


# ----------------------------------------------------------------------------------------------
# The sidecar and the compatibility rules
# ----------------------------------------------------------------------------------------------

def engine_sidecar(*, config: ClippyConfig, logit_scale: float, precision: str, mode: str,
                   settings: BuildSettings, env: RuntimeEnvironment, onnx_files: Mapping[str, Dict[str, object]],
                   plans: Mapping[str, Dict[str, object]], tokenizer: str, build_seconds: float,
                   rebuild_command: str) -> Dict[str, object]:
    """The ``engine.json`` content."""
    return {
        "format": SIDECAR_FORMAT,
        "format_version": SIDECAR_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "tensorrt_version": env.tensorrt_version,
        "gpu_name": env.gpu_name,
        "compute_capability": list(env.compute_capability),
        "precision": precision,
        "typing": mode,
        "profiles": {graph.name: {name: [list(s) for s in shapes]
                                  for name, shapes in profile_shapes(graph, settings).items()}
                     for graph in TOWERS},
        "workspace_mb": settings.workspace_mb,
        "dla_core": settings.dla_core,
        "gpu_fallback": settings.gpu_fallback,
        "graphs": {graph.name: graph.describe(config) for graph in TOWERS},
        "source_onnx": dict(onnx_files),
        "plans": dict(plans),
        "config": config.to_dict(),
        "logit_scale": logit_scale,
        "tokenizer": tokenizer,
        "build_seconds": round(build_seconds, 1),
        "rebuild_command": rebuild_command,
    }


# ----------------------------------------------------------------------------------------------
# Building
# ----------------------------------------------------------------------------------------------

class _Logger:
    """A TensorRT logger that forwards warnings and errors to ``log`` (built lazily)."""

    @staticmethod
    def create(trt, log: Callable[[str], None]):
        levels = trt.ILogger.Severity
        shown = {levels.INTERNAL_ERROR, levels.ERROR, levels.WARNING}

        class Logger(trt.ILogger):
            def __init__(self) -> None:
                trt.ILogger.__init__(self)

            def log(self, severity, msg) -> None:
                if severity in shown:
                    log(f"TensorRT: {msg}")

        return Logger()


def parser_errors(parser) -> str:
    """Every ONNX parser error as one line each: node index, name, operator, description."""
    lines = []
    for index in range(parser.num_errors):
        error = parser.get_error(index)
        node = error.node()
        # node_name / node_operator exist from TensorRT 10 (8.6 gives only the index).
        name = error.node_name() if hasattr(error, "node_name") else ""
        operator = error.node_operator() if hasattr(error, "node_operator") else ""
        where = f"node {node}" + (f" {name!r}" if name else "") + (f" ({operator})" if operator else "")
        lines.append(f"{where}: {error.desc()} [{error.code()}]")
    return "; ".join(lines) or "no error reported by the parser"


def build_plan(trt, onnx_path: Path, graph: GraphSpec, settings: BuildSettings, strongly_typed: bool,
               timing_cache: Optional[bytes], logger) -> Tuple[bytes, Optional[bytes]]:
    """Parse ``onnx_path`` and build one serialized engine. Returns (plan, timing cache bytes)."""
    builder = trt.Builder(logger)
    flags = 0
    if trt_major(trt.__version__) < 10:
        # Explicit batch is the only mode of TensorRT 10 and must be requested before it.
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    if strongly_typed:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        raise ModelDirError(f"TensorRT's ONNX parser rejected {onnx_path}: {parser_errors(parser)}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_mb << 20)
    if settings.fp16 and not strongly_typed:
        if not builder.platform_has_fast_fp16:
            raise BackendUnavailableError("this GPU has no fast float16; build without --fp16")
        config.set_flag(trt.BuilderFlag.FP16)
    if settings.dla_core is not None:
        if builder.num_DLA_cores <= settings.dla_core:
            raise InputError(f"--dla-core {settings.dla_core}: this device has {builder.num_DLA_cores} DLA cores")
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = settings.dla_core
        if settings.gpu_fallback:
            config.set_flag(trt.BuilderFlag.GPU_FALLBACK)

    profile = builder.create_optimization_profile()
    for name, (low, opt, high) in profile_shapes(graph, settings).items():
        profile.set_shape(name, low, opt, high)
    config.add_optimization_profile(profile)

    cache = config.create_timing_cache(timing_cache or b"")
    config.set_timing_cache(cache, ignore_mismatch=False)

    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(f"TensorRT could not build an engine from {onnx_path} (see the TensorRT messages "
                           f"above; a larger --workspace or narrower --batch/--size ranges may help)")
    return bytes(plan), bytes(config.get_timing_cache().serialize())


def build_engines(onnx_dir: Path, out: Path, settings: BuildSettings, *, overwrite: bool = False,
                  log: Optional[Callable[[str], None]] = None, rebuild_command: str = "") -> Path:
    """Build ``image.plan`` and ``text.plan`` from ``onnx_dir`` into the engine directory ``out``.

    Written atomically. The timing cache (``settings.timing_cache``) is read if present and
    rewritten with the new timings. Raises ``BackendUnavailableError`` without TensorRT or a
    GPU, ``ModelDirError`` for a bad ONNX directory or a graph the parser rejects.
    """
    import torch


    log = log or (lambda message: None)
    check_output_dir(Path(out), overwrite)
    trt = import_tensorrt()
    onnx_dir = read_onnx_dir(Path(onnx_dir))
    config = onnx_dir.config
    settings = settings.resolved(config)
    env = current_environment(trt, settings.device)
    torch.cuda.set_device(settings.device)

    strongly_typed = (settings.fp16 and "fp16" in onnx_dir.precisions
                      and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"))
    source_precision = "fp16" if strongly_typed else "fp32"
    mode = "strongly-typed" if strongly_typed else ("weakly-typed fp16 flag" if settings.fp16 else "fp32")
    cache_path = Path(settings.timing_cache) if settings.timing_cache else None
    cache = cache_path.read_bytes() if cache_path is not None and cache_path.is_file() else None
    logger = _Logger.create(trt, log)

    start = time.perf_counter()
    with atomic_directory(Path(out), overwrite=overwrite) as tmp:
        plans, sources = {}, {}
        for graph in TOWERS:
            onnx_path = onnx_dir.graph_path(graph.name, source_precision)
            log(f"building the {graph.name} engine from {onnx_path.name} ({mode})")
            plan, cache = build_plan(trt, onnx_path, graph, settings, strongly_typed, cache, logger)
            plan_name = graph.name + PLAN_SUFFIX
            (tmp / plan_name).write_bytes(plan)
            plans[graph.name] = {"file": plan_name, "bytes": len(plan), "sha256": sha256_file(tmp / plan_name)}
            sources[graph.name] = {"file": onnx_path.name,
                                   "sha256": onnx_dir.manifest["files"][onnx_path.name]["sha256"]}
        shutil.copyfile(onnx_dir.path / CONFIG_FILE, tmp / CONFIG_FILE)
        shutil.copyfile(onnx_dir.tokenizer, tmp / onnx_dir.tokenizer.name)
        if (onnx_dir.path / VOCABULARY_FILE).is_file():
            shutil.copyfile(onnx_dir.path / VOCABULARY_FILE, tmp / VOCABULARY_FILE)
        sidecar = engine_sidecar(config=config, logit_scale=onnx_dir.logit_scale,
                                 precision="fp16" if settings.fp16 else "fp32", mode=mode, settings=settings,
                                 env=env, onnx_files=sources, plans=plans, tokenizer=onnx_dir.tokenizer.name,
                                 build_seconds=time.perf_counter() - start,
                                 rebuild_command=rebuild_command or f"clippy-rt build {onnx_dir.path} --out {out}")
        (tmp / SIDECAR_FILE).write_text(json.dumps(sidecar, indent=2) + "\n")
    if cache_path is not None and cache is not None:
        atomic_write_bytes(cache_path, cache)
        log(f"timing cache saved to {cache_path}")
    return Path(out)
