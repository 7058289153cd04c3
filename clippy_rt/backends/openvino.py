"""OpenVINO backend: serves an ONNX directory (``clippy-rt export``) on OpenVINO's CPU plugin.

It reads the directory's float32 graphs as they are (no second export) and compiles them
for the CPU; feeds are validated against the I/O spec first, so a wrong shape or dtype is
the same ``InputError`` as on every backend.

Precisions:

- ``fp32``: the float32 graphs with the inference precision hint ``f32`` (OpenVINO would
  otherwise pick bf16 by itself on a CPU that has it);
- ``bf16``: the same graphs with the hint ``bf16``, only where OpenVINO reports BF16 among
  the CPU's optimisation capabilities (AVX512_BF16 or AMX); elsewhere it would silently
  run float32, so it is refused with ``BackendUnavailableError``;
- ``int8``: the graphs NNCF quantised at export (``clippy-rt export --openvino-int8``,
  ``export/openvino_int8.py``), listed and hashed in the manifest; the rest of the graph
  runs float32.

Compile settings: one stream, ``INFERENCE_NUM_THREADS`` = physical cores (as for ONNX
Runtime), latency hint. Compiled models are cached on disk (``CACHE_DIR``, by default
``$XDG_CACHE_HOME/clippy-rt/openvino``), keyed by OpenVINO on the graph and the settings,
so a restarted process loads them instead of compiling again.

One engine may be shared by threads: each thread runs its own infer request.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Dict, Mapping, Optional, Union

import numpy as np
import torch

from clippy_rt.config import ClippyConfig
from clippy_rt.engine import Engine, resolve_device
from clippy_rt.errors import BackendUnavailableError, InputError, ModelDirError
from clippy_rt.formats.io_spec import IMAGE, TEXT, GraphSpec, check_io
from clippy_rt.formats.onnx_dir import read_onnx_dir
from clippy_rt.runner import Runner
from clippy_rt.text_cache import TextCache
from clippy_rt.tokenizer import load_tokenizer
from clippy_rt.validate import check_positive_int

from . import physical_cores

try:
    import openvino as ov
except ImportError as _exc:  # re-raised by clippy_rt.load as BackendUnavailableError
    raise ImportError(f"openvino is not installed ({_exc})") from _exc

# The precision served -> OpenVINO's inference precision hint.
HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}
PRECISIONS = tuple(HINTS)
# OpenVINO element types -> the I/O spec's dtype names.
_OV_TYPES = {"f32": "float32", "i64": "int64", "f16": "float16"}


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/clippy-rt/openvino`` (``~/.cache/clippy-rt/openvino`` when unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "clippy-rt" / "openvino"


def cpu_capabilities(core: Optional["ov.Core"] = None) -> tuple:
    """OpenVINO's optimisation capabilities of this CPU (e.g. FP32, INT8, BF16)."""
    return tuple((core or ov.Core()).get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def compile_settings(precision: str, threads: Optional[int] = None) -> Dict[str, object]:
    """The CPU plugin's settings for ``precision`` (module docstring explains each)."""
    if threads is not None:
        check_positive_int("threads", threads)
    return {"INFERENCE_PRECISION_HINT": HINTS[precision], "INFERENCE_NUM_THREADS": threads or physical_cores(),
            "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY"}


class OvRunner(Runner):
    """One graph compiled by OpenVINO for the CPU. ``ModelDirError`` for a graph file that
    OpenVINO cannot read or whose tensors are not the spec's."""

    def __init__(self, core: "ov.Core", path: Path, graph: GraphSpec, config: ClippyConfig,
                 settings: Mapping[str, object]) -> None:
        super().__init__(graph, config, torch.device("cpu"))
        self.path = Path(path)
        try:
            self.compiled = core.compile_model(str(self.path), "CPU", dict(settings))
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelDirError(f"{self.path} cannot be loaded by OpenVINO (corrupt or truncated graph?): "
                                f"{first}") from None
        inputs = [(_port_name(port, graph.input_names), _OV_TYPES.get(port.get_element_type().get_type_name()),
                   None) for port in self.compiled.inputs]
        outputs = [(_port_name(port, graph.output_names), _OV_TYPES.get(port.get_element_type().get_type_name()),
                    None) for port in self.compiled.outputs]
        check_io(graph, inputs, outputs, self.path)
        self._outputs = [self.compiled.output(name) for name in graph.output_names]
        self._local = threading.local()

    @property
    def loaded_from_cache(self) -> bool:
        """Whether OpenVINO read this graph's compiled form from the cache instead of compiling it."""
        return bool(self.compiled.get_property("LOADED_FROM_CACHE"))

    def run_torch(self, feed: Mapping[str, torch.Tensor], dims: Dict[str, int]) -> Dict[str, torch.Tensor]:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        arrays = {name: np.ascontiguousarray(value.detach().cpu().numpy()) for name, value in feed.items()}
        results = request.infer(arrays)  # outputs are copies: the request may be reused at once
        return {name: torch.from_numpy(results[port]) for name, port in zip(self.graph.output_names, self._outputs)}


def _port_name(port, spec_names) -> str:
    """The port's name that the spec uses, if it has one (OpenVINO keeps several per port)."""
    names = port.get_names()
    for name in spec_names:
        if name in names:
            return name
    return port.get_any_name()


def load_openvino(path, device: str = "cpu", precision: Optional[str] = "fp32", *, threads: Optional[int] = None,
                  cache_dir: Union[str, Path, None] = None, verify_checksums: bool = True,
                  text_cache: Optional[TextCache] = None) -> Engine:
    """Load an ONNX directory written by ``clippy-rt export`` as an Engine on OpenVINO's CPU plugin.

    ``precision``: "fp32", "bf16" (where the CPU has bf16 instructions) or "int8" (where the
    directory was exported with ``--openvino-int8``); inputs and outputs are float32 either
    way. ``cache_dir``: where compiled models are kept (default ``default_cache_dir()``).
    Raises ``ModelDirError`` for a missing, inconsistent, truncated or corrupt directory,
    ``InputError`` for bad arguments, ``BackendUnavailableError`` for a device or precision
    this machine cannot run.
    """
    precision = precision or "fp32"
    if precision not in PRECISIONS:
        raise InputError(f"the openvino backend serves precision {', '.join(map(repr, PRECISIONS))}, "
                         f"got {precision!r}")
    try:
        on_cpu = torch.device(device).type == "cpu"
    except (RuntimeError, TypeError):
        on_cpu = True  # not a device name: resolve_device says what is wrong
    if not on_cpu:
        raise BackendUnavailableError(f"the openvino backend runs on the CPU, got device {device!r}")
    resolved = resolve_device(device)
    core = ov.Core()
    if precision == "bf16" and "BF16" not in cpu_capabilities(core):
        raise BackendUnavailableError(
            f"bf16 needs a CPU with bfloat16 instructions (AVX512_BF16 or AMX); OpenVINO reports "
            f"{', '.join(cpu_capabilities(core))} for this one. Use precision 'fp32' or 'int8'")
    onnx_dir = read_onnx_dir(Path(path), verify_checksums=verify_checksums)
    if precision == "int8":
        files = {graph.name: onnx_dir.openvino_int8_path(graph.name) for graph in (IMAGE, TEXT)}
        if files[IMAGE.name] is None:
            raise ModelDirError(f"{path} holds no OpenVINO int8 graphs; re-export with "
                                f"`clippy-rt export ... --openvino-int8` to add them")
    else:
        files = {graph.name: onnx_dir.graph_path(graph.name, "fp32") for graph in (IMAGE, TEXT)}
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    core.set_property({"CACHE_DIR": str(cache)})
    settings = compile_settings(precision, threads)
    from . import REGISTRY

    tokenizer = load_tokenizer(onnx_dir.tokenizer, onnx_dir.config)
    image = OvRunner(core, files[IMAGE.name], IMAGE, onnx_dir.config, settings)
    text = OvRunner(core, files[TEXT.name], TEXT, onnx_dir.config, settings)
    return Engine(image, text, tokenizer, onnx_dir.config, backend=REGISTRY["openvino"], device=resolved,
                  precision=precision, logit_scale=onnx_dir.logit_scale, source=onnx_dir.path,
                  text_cache=text_cache)
