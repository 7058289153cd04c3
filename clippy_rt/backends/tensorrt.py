"""TensorRT backend: serves an engine directory (``clippy-rt build``) through the Engine API.

- The sidecar ``engine.json`` is checked against the running TensorRT version and GPU
  before any plan is deserialized; a mismatch is a ``ModelDirError`` with the rebuild
  command (``clippy_rt.formats.engine_dir.check_sidecar``).
- Buffers are torch CUDA tensors (torch is a dependency of clippy-rt on every platform,
  Jetson included, so no pycuda / cuda-python path is needed).
- Named-tensor API: ``set_input_shape`` / ``set_tensor_address`` / ``execute_async_v3``
  (TensorRT 8.5 and later, so 8.6 on JetPack 5/6 works too), on a CUDA stream owned by
  the calling thread.
- Thread safety: an execution context is not thread-safe, so each thread gets its own
  context and stream (``threading.local``); the deserialized engine is shared.
- Text embeddings stay on the GPU: the Engine base class caches them per prompt.

Inputs are cast to the engine's declared input types (TensorRT 8.6 turns int64 ids into
int32), and every feed is validated against the I/O spec and the engine's optimisation
profile first: a shape outside the profile is an ``InputError`` naming the range and the
``clippy-rt build`` option that widens it.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Dict, Mapping, Optional

import torch

from clippy_rt.config import ClippyConfig
from clippy_rt.engine import Engine, resolve_device
from clippy_rt.errors import BackendUnavailableError, ConfigError, InputError, ModelDirError
from clippy_rt.formats.engine_dir import (SIDECAR_FILE, RuntimeEnvironment, check_sidecar, current_environment,
                                          import_tensorrt, read_sidecar)
from clippy_rt.formats.io_spec import IMAGE, TEXT, GraphSpec, check_io
from clippy_rt.formats.onnx_dir import check_file
from clippy_rt.runner import Runner
from clippy_rt.text_cache import TextCache
from clippy_rt.tokenizer import load_tokenizer
from clippy_rt.validate import check_positive_int


# The clippy-rt build option that sets each dynamic axis's range.
_AXIS_OPTIONS = {"batch": "--batch", "height": "--size", "width": "--size", "prompts": "--prompts",
                 "length": "--length"}


def _torch_dtype(trt, dtype) -> torch.dtype:
    table = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16, trt.DataType.INT32: torch.int32}
    if hasattr(trt.DataType, "INT64"):
        table[trt.DataType.INT64] = torch.int64
    if dtype not in table:
        raise ModelDirError(f"engine tensor type {dtype} is not supported by clippy-rt")
    return table[dtype]


class TrtRunner(Runner):
    """One deserialized engine: ``infer_torch(feed) -> {output name: CUDA tensor}``."""

    def __init__(self, trt, runtime, plan: bytes, graph: GraphSpec, config, device: torch.device,
                 where: Path, logger=None) -> None:
        super().__init__(graph, config, device)
        self.trt = trt
        # The runtime and its logger must outlive the engine they deserialized.
        self.runtime, self.logger = runtime, logger
        self.where = where
        with torch.cuda.device(device):
            self.engine = runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            raise ModelDirError(f"{where}: TensorRT could not deserialize the {graph.name} engine (corrupt plan, "
                                f"or built by another TensorRT); rebuild it with `clippy-rt build`")
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        check_io(graph, [(n, None, None) for n in inputs], [(n, None, None) for n in outputs], where, ordered=False)
        self.dtypes = {n: _torch_dtype(trt, self.engine.get_tensor_dtype(n)) for n in names}
        self.profile = {n: tuple(tuple(int(d) for d in shape) for shape in self.engine.get_tensor_profile_shape(n, 0))
                        for n in inputs}
        self._local = threading.local()

    def _context(self):
        """This thread's execution context and stream, created on first use."""
        state = getattr(self._local, "state", None)
        if state is None:
            context = self.engine.create_execution_context()
            if context is None:
                raise RuntimeError(f"TensorRT could not create an execution context for the {self.graph.name} "
                                   f"engine (out of GPU memory?)")
            state = (context, torch.cuda.Stream(self.device))
            self._local.state = state
        return state

    def _check_profile(self, feed: Mapping[str, torch.Tensor]) -> None:
        for spec in self.graph.inputs:
            shape = tuple(feed[spec.name].shape)
            low, _, high = self.profile[spec.name]
            for index, axis in enumerate(spec.axes):
                if isinstance(axis, str) and not low[index] <= shape[index] <= high[index]:
                    raise InputError(
                        f"{spec.name} {axis} = {shape[index]} is outside the engine's range "
                        f"[{low[index]}, {high[index]}]; rebuild with a wider `clippy-rt build "
                        f"{_AXIS_OPTIONS.get(axis, '')} MIN,OPT,MAX`")

    def validate(self, feed: Mapping[str, object]) -> Dict[str, int]:
        """The I/O spec's checks, then the engine's optimisation profile."""
        dims = super().validate(feed)
        self._check_profile(feed)
        return dims

    def run_torch(self, feed: Mapping[str, torch.Tensor], dims: Dict[str, int]) -> Dict[str, torch.Tensor]:
        context, stream = self._context()
        caller = torch.cuda.current_stream(self.device)
        stream.wait_stream(caller)
        inputs, outputs = {}, {}
        with torch.cuda.stream(stream):
            for spec in self.graph.inputs:
                tensor = feed[spec.name].to(self.device, self.dtypes[spec.name], non_blocking=True).contiguous()
                inputs[spec.name] = tensor
                if not context.set_input_shape(spec.name, tuple(tensor.shape)):
                    raise InputError(f"TensorRT rejected {spec.name} of shape {tuple(tensor.shape)}")
                context.set_tensor_address(spec.name, tensor.data_ptr())
            for spec in self.graph.outputs:
                shape = tuple(int(d) for d in context.get_tensor_shape(spec.name))
                tensor = torch.empty(shape, dtype=self.dtypes[spec.name], device=self.device)
                outputs[spec.name] = tensor
                context.set_tensor_address(spec.name, tensor.data_ptr())
            if not context.execute_async_v3(stream.cuda_stream):
                raise RuntimeError(f"TensorRT failed to run the {self.graph.name} engine")
        # The caller's stream must see the outputs; the buffers must outlive the work.
        caller.wait_stream(stream)
        for tensor in list(inputs.values()) + list(outputs.values()):
            tensor.record_stream(caller)
        return {name: tensor.float() for name, tensor in outputs.items()}


def load_tensorrt(path, device: str = "cuda", precision: Optional[str] = None, *,
                  environment: Optional[RuntimeEnvironment] = None,
                  text_cache: Optional[TextCache] = None, threads: Optional[int] = None) -> Engine:
    """Load an engine directory written by ``clippy-rt build`` as an Engine.

    ``device`` must be a CUDA device. ``precision`` is fixed when the engines are built;
    given, it must match the sidecar's. Raises ``BackendUnavailableError`` without TensorRT
    or a GPU, ``ModelDirError`` for a missing or inconsistent directory or an engine built
    by another TensorRT version or for another GPU (the message gives the rebuild command).
    """
    path = Path(path)
    sidecar = read_sidecar(path)
    if precision is not None and precision != sidecar["precision"]:
        raise InputError(f"the engines in {path} were built for {sidecar['precision']}; precision {precision!r} "
                         f"needs a rebuild (`clippy-rt build` {'with' if precision == 'fp16' else 'without'} --fp16)")
    if threads is not None:  # host-side torch work (pre-processing, copies)
        torch.set_num_threads(check_positive_int("threads", threads))
    resolved = resolve_device(device)
    if resolved.type != "cuda":
        raise InputError(f"TensorRT engines run on a CUDA device; got device {str(resolved)!r} (use 'cuda')")
    trt = import_tensorrt()
    index = resolved.index if resolved.index is not None else torch.cuda.current_device()
    resolved = torch.device("cuda", index)
    check_sidecar(sidecar, environment or current_environment(trt, index), path)
    for entry in sidecar["plans"].values():
        check_file(path / entry["file"], entry, verify_checksum=True, listed_in=SIDECAR_FILE)
    try:
        config = ClippyConfig.from_dict(sidecar["config"])
    except ConfigError as exc:
        raise ModelDirError(f"{path / SIDECAR_FILE}: invalid config: {exc}") from None
    tokenizer_path = path / str(sidecar["tokenizer"])
    if not tokenizer_path.is_file():
        raise ModelDirError(f"{path} has no tokenizer file {sidecar['tokenizer']!r}")
    from . import REGISTRY

    tokenizer = load_tokenizer(tokenizer_path, config)
    logger = trt.Logger(trt.Logger.WARNING)
    runtime = trt.Runtime(logger)
    image, text = (TrtRunner(trt, runtime, (path / sidecar["plans"][graph.name]["file"]).read_bytes(), graph,
                             config, resolved, path, logger) for graph in (IMAGE, TEXT))
    return Engine(image, text, tokenizer, config, backend=REGISTRY["tensorrt"], device=resolved,
                  precision=str(sidecar["precision"]), logit_scale=float(sidecar["logit_scale"]), source=path,
                  text_cache=text_cache)


def tensorrt_available() -> bool:
    """Whether ``import tensorrt`` succeeds here."""
    try:
        import_tensorrt()
    except BackendUnavailableError:
        return False
    return True
