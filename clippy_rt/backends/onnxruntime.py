"""ONNX Runtime backend: serves an ONNX directory (``clippy-rt export``) through the Engine API.

CPU by default; ``device="cuda"`` uses the CUDA execution provider of ``onnxruntime-gpu``
with inputs and outputs bound to torch CUDA tensors (IO binding), so nothing is copied
through the host. Every feed is validated against the I/O spec before ONNX Runtime sees
it, so a wrong shape or dtype is an ``InputError`` naming the tensor, not an ORT trace.

Session options, and why:

- graph optimisation ``ORT_ENABLE_ALL``: constant folding, LayerNorm/GELU/MatMul+Add
  fusions and the CPU layout transforms. ``ENABLE_EXTENDED`` and ``onnxruntime.transformers``'
  offline fusions (which find no Attention in the packed-qkv graph) were no faster
  (``benchmarks/bench_onnx.py --extended --fusions``; figures in benchmarks/RESULTS.md).
- ``intra_op_num_threads`` = physical cores: ORT's GEMMs do not gain from hyper-threads,
  and a thread per logical CPU makes the spinning pool fight its sibling.
- ``inter_op_num_threads`` = 1 with sequential execution: the towers are a chain of large
  ops, there is no branch parallelism to exploit.
- no spinning (``session.intra_op.allow_spinning = 0``): by default the intra-op pool's
  threads keep spinning for a while after each run, and an engine holds two sessions
  (image and text tower), each with its own pool. Run one right after the other and the
  second one's threads compete for the cores with the first one's still-spinning threads:
  with spinning pools ``segment`` with a changing vocabulary (text tower, then image tower)
  took 1.2x (fp32) and 1.6x (int8) its time without, on a loaded 2-core host. Blocking
  threads cost a wake-up per parallel region, which the towers' large GEMMs do not feel
  (``benchmarks/bench_cpu.py --part spinning``; figures in benchmarks/RESULTS.md).
- the CPU memory arena and memory patterns stay on: they remove per-call allocations;
  the arena grows to the largest shape served and keeps it.

ONNX Runtime's ``InferenceSession.run`` is thread-safe, so one engine may be shared by
threads without a lock.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Mapping, Optional

import numpy as np
import torch

from clippy_rt.config import ClippyConfig
from clippy_rt.engine import Engine, resolve_device
from clippy_rt.errors import BackendUnavailableError, InputError, ModelDirError
from clippy_rt.formats.io_spec import GRAPH_PRECISIONS, IMAGE, TEXT, GraphSpec, check_io, fixed_dims
from clippy_rt.formats.onnx_dir import read_onnx_dir
from clippy_rt.runner import Runner, torch_dtype
from clippy_rt.text_cache import TextCache
from clippy_rt.tokenizer import load_tokenizer

from clippy_rt.validate import check_positive_int

from . import physical_cores  # noqa: F401  (defined in the package: both CPU runtimes use it)

try:
    import onnxruntime as ort
except ImportError as _exc:  # re-raised by clippy_rt.load as BackendUnavailableError
    raise ImportError(f"onnxruntime is not installed ({_exc})") from _exc

# ONNX Runtime's own exception classes (they derive from Exception only).
_ORT_ERRORS = tuple(cls for cls in vars(ort.capi.onnxruntime_pybind11_state).values()
                    if isinstance(cls, type) and issubclass(cls, Exception)) + (RuntimeError,)

OPTIMIZATION_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


# Session config keys (onnxruntime_session_options_config_keys.h).
INTRA_OP_SPINNING = "session.intra_op.allow_spinning"
INTER_OP_SPINNING = "session.inter_op.allow_spinning"


def session_options(threads: Optional[int] = None, optimization: str = "all",
                    spinning: bool = False) -> "ort.SessionOptions":
    """The session options this backend uses (module docstring explains each choice).
    ``spinning=True`` restores ONNX Runtime's spinning thread pool (for benchmarks)."""
    if optimization not in OPTIMIZATION_LEVELS:
        raise InputError(f"optimization must be one of {', '.join(OPTIMIZATION_LEVELS)}, got {optimization!r}")
    if threads is not None:
        check_positive_int("threads", threads)
    options = ort.SessionOptions()
    options.graph_optimization_level = OPTIMIZATION_LEVELS[optimization]
    options.intra_op_num_threads = threads or physical_cores()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.enable_cpu_mem_arena = True
    options.enable_mem_pattern = True
    options.log_severity_level = 3
    for key in (INTRA_OP_SPINNING, INTER_OP_SPINNING):
        options.add_session_config_entry(key, "1" if spinning else "0")
    return options


def providers_for(device: torch.device, tensorrt_provider: bool = False) -> list:
    """Execution providers for ``device``: CPU, or CUDA (optionally TensorRT first) then CPU."""
    if device.type == "cpu":
        return ["CPUExecutionProvider"]
    available = ort.get_available_providers()
    if "CUDAExecutionProvider" not in available:
        raise BackendUnavailableError(
            f"device {str(device)!r} needs onnxruntime-gpu (CUDAExecutionProvider); this onnxruntime "
            f"offers {', '.join(available)}. Install it with: pip install onnxruntime-gpu")
    index = device.index or 0
    providers = [("CUDAExecutionProvider", {"device_id": index})]
    if tensorrt_provider:
        if "TensorrtExecutionProvider" not in available:
            raise BackendUnavailableError("the TensorRT execution provider is not available in this onnxruntime")
        providers.insert(0, ("TensorrtExecutionProvider", {"device_id": index, "trt_fp16_enable": True}))
    return providers + ["CPUExecutionProvider"]


class OrtRunner(Runner):
    """One graph in one ONNX Runtime session: ``infer(feed) -> {output name: array}``.

    The feed is checked against ``graph``'s spec first (``InputError`` on mismatch). A graph
    file that ONNX Runtime cannot load, or whose inputs and outputs are not the spec's,
    raises ``ModelDirError``.
    """

    def __init__(self, path: Path, graph: GraphSpec, config: ClippyConfig, *,
                 device: torch.device = torch.device("cpu"), threads: Optional[int] = None,
                 optimization: str = "all", tensorrt_provider: bool = False, spinning: bool = False) -> None:
        super().__init__(graph, config, device)
        self.path = Path(path)
        try:
            self.session = ort.InferenceSession(str(self.path),
                                                sess_options=session_options(threads, optimization, spinning),
                                                providers=providers_for(device, tensorrt_provider))
        except _ORT_ERRORS as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelDirError(f"{self.path} cannot be loaded by ONNX Runtime (corrupt or truncated graph?): "
                                f"{first}") from None
        self._check_session_io()

    def _check_session_io(self) -> None:
        check_io(self.graph, [(v.name, _spec_dtype(v.type), None) for v in self.session.get_inputs()],
                 [(v.name, _spec_dtype(v.type), None) for v in self.session.get_outputs()], self.path)

    def infer(self, feed: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """Run on host arrays (or CPU tensors): validated feed -> {output name: numpy array}."""
        self.validate(feed)
        arrays = {name: _as_numpy(value) for name, value in feed.items()}
        outputs = self.session.run(list(self.graph.output_names), arrays)
        return dict(zip(self.graph.output_names, outputs))

    def run_torch(self, feed: Mapping[str, torch.Tensor], dims: Dict[str, int]) -> Dict[str, torch.Tensor]:
        """Run on torch tensors; returns torch tensors on ``self.device``.

        On CUDA the inputs and the outputs are bound in place (IO binding); on CPU the
        arrays share memory with the tensors.
        """
        if self.device.type == "cpu":
            outputs = self.session.run(list(self.graph.output_names),
                                       {name: _as_numpy(value) for name, value in feed.items()})
            return {name: torch.from_numpy(out) for name, out in zip(self.graph.output_names, outputs)}
        return self._infer_cuda(feed, dims)

    def _infer_cuda(self, feed: Mapping[str, torch.Tensor], dims: Dict[str, int]) -> Dict[str, torch.Tensor]:
        binding = self.session.io_binding()
        index = self.device.index or 0
        inputs = {}
        for spec in self.graph.inputs:
            tensor = feed[spec.name].to(self.device).contiguous()
            inputs[spec.name] = tensor  # keeps the buffer alive until the run returns
            binding.bind_input(spec.name, "cuda", index, spec.numpy_dtype, tuple(tensor.shape), tensor.data_ptr())
        dims = dict(dims)
        dims.update(output_dims(self.graph, dims, self.config))
        outputs = {}
        for spec in self.graph.outputs:
            tensor = torch.empty(spec.shape(dims), dtype=torch_dtype(spec.dtype), device=self.device)
            outputs[spec.name] = tensor
            binding.bind_output(spec.name, "cuda", index, spec.numpy_dtype, tuple(tensor.shape), tensor.data_ptr())
        # ORT runs on its own CUDA stream; wait for torch's work on the inputs first.
        torch.cuda.current_stream(self.device).synchronize()
        self.session.run_with_iobinding(binding)
        return outputs


def output_dims(graph: GraphSpec, dims: Mapping[str, int], config: ClippyConfig) -> Dict[str, int]:
    """Sizes of output-only axes, derived from the input sizes."""
    out = dict(fixed_dims(config))
    if graph.name == IMAGE.name:
        patch = config.image.patch_size
        out["patches"] = (dims["height"] // patch) * (dims["width"] // patch)
    return out


# ONNX Runtime's type strings -> the I/O spec's dtype names.
_ORT_TYPES = {"tensor(float)": "float32", "tensor(int64)": "int64", "tensor(float16)": "float16"}


def _spec_dtype(ort_type: str) -> str:
    return _ORT_TYPES.get(ort_type, ort_type)


def _as_numpy(value) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return np.ascontiguousarray(value.detach().cpu().numpy())
    return np.ascontiguousarray(value)


def load_onnxruntime(path, device: str = "cpu", precision: Optional[str] = "fp32", *, threads: Optional[int] = None,
                     optimization: str = "all", tensorrt_provider: bool = False, spinning: bool = False,
                     verify_checksums: bool = True, text_cache: Optional[TextCache] = None) -> Engine:
    """Load an ONNX directory written by ``clippy-rt export`` as an Engine.

    ``precision`` selects the graphs ("fp32", or "fp16" / "int8" where the directory was
    exported with ``--fp16`` / ``--int8``; int8 runs on the CPU only); inputs and outputs
    are float32 either way. ``spinning=True`` lets the thread pools spin between runs
    (ONNX Runtime's default; off here, see the module doc). Raises ``ModelDirError``
    for a missing, inconsistent, truncated or corrupt directory, ``InputError`` for bad
    arguments, ``BackendUnavailableError`` for a device this onnxruntime cannot use.
    """
    precision = precision or "fp32"
    resolved = resolve_device(device)
    if precision not in GRAPH_PRECISIONS:
        raise InputError(f"the onnxruntime backend serves precision {' or '.join(map(repr, GRAPH_PRECISIONS))}, "
                         f"got {precision!r}")
    if precision == "int8" and resolved.type != "cpu":
        # The fused dynamic-quantisation kernels exist for the CPU provider only.
        raise InputError(f"int8 graphs run on the CPU only, got device {device!r}")
    onnx_dir = read_onnx_dir(Path(path), verify_checksums=verify_checksums)
    if precision not in onnx_dir.precisions:
        raise ModelDirError(f"{path} holds {', '.join(onnx_dir.precisions)} graphs, not {precision}; "
                            f"re-export with `clippy-rt export ... --{precision}` to add them")
    from . import REGISTRY

    tokenizer = load_tokenizer(onnx_dir.tokenizer, onnx_dir.config)
    options = dict(device=resolved, threads=threads, optimization=optimization, tensorrt_provider=tensorrt_provider,
                   spinning=spinning)
    image = OrtRunner(onnx_dir.graph_path(IMAGE.name, precision), IMAGE, onnx_dir.config, **options)
    text = OrtRunner(onnx_dir.graph_path(TEXT.name, precision), TEXT, onnx_dir.config, **options)
    return Engine(image, text, tokenizer, onnx_dir.config, backend=REGISTRY["onnxruntime"], device=resolved,
                  precision=precision, logit_scale=onnx_dir.logit_scale, source=onnx_dir.path,
                  text_cache=text_cache)

