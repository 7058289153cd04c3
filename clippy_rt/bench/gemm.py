"""The GEMM limit: this machine's measured matrix-product rate per precision, and a tower's share of it.

A ViT image tower is almost all matrix products, so the rate a CPU reaches on one large
product in a precision bounds what any runtime can reach on the tower in that precision.
``image_tower_flops`` counts the tower's products (2 x multiply-adds: patch embedding,
qkv, attention scores and their weighted sum, output projection, both MLP layers; norms,
softmax and GELU are not counted). ``GemmProbe``s time one product of the tower's own
largest shape (tokens x width @ width x MLP width, the first MLP layer, constant weight) in
every runtime and precision a contender uses; the limit of a precision is the best probe
of that precision, so "fraction of the GEMM limit" of a contender is
``flops / median time / limit``.

Probes (each built lazily; a runtime that is not installed has no probe):

- ``torch fp32`` / ``torch bf16``: ``torch.matmul`` (oneDNN / MKL);
- ``onnxruntime fp32``: a one-``MatMul`` ONNX graph in an ONNX Runtime session with the
  backend's own session options; ``onnxruntime int8``: the same graph through the
  exporter's dynamic quantisation (``clippy_rt.export.int8``);
- ``openvino fp32`` / ``bf16``: the same graph compiled by OpenVINO with the backend's own
  settings; ``openvino int8``: the graph quantised by NNCF on random activations.
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch


def image_tower_flops(image_config, batch: int, size: int) -> float:
    """Floating-point operations (2 x multiply-adds) of the image tower's matrix products for
    ``batch`` images of ``size`` x ``size`` pixels."""
    patch, width, mlp = image_config.patch_size, image_config.width, image_config.mlp_dim
    patches = (size // patch) ** 2
    tokens = patches + 1
    embed = patches * 3 * patch * patch * width
    per_layer = (tokens * width * 3 * width      # qkv
                 + 2 * tokens * tokens * width    # scores and their weighted sum
                 + tokens * width * width         # output projection
                 + 2 * tokens * width * mlp)      # both MLP layers
    return 2.0 * batch * (embed + image_config.depth * per_layer)


def probe_shape(image_config, batch: int, size: int) -> Tuple[int, int, int]:
    """(M, K, N) of the tower's largest product: all tokens of the batch x width @ width x MLP width."""
    tokens = (size // image_config.patch_size) ** 2 + 1
    return batch * tokens, image_config.width, image_config.mlp_dim


@dataclass
class GemmProbe:
    """One product of shape (M, K, N) in one runtime and precision. ``run()`` computes it
    ``repeats`` times (so one call lasts long enough to time); ``flops`` is per call."""

    name: str
    precision: str
    run: Callable[[], object]
    flops: float


def _weights(k: int, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)


def _matmul_onnx(path: Path, m: int, k: int, n: int, seed: int) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = _weights(k, n, seed)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="probe")], "gemm_probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])],
        [numpy_helper.from_array(weight, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def _repeat(fn: Callable[[], object], repeats: int) -> Callable[[], None]:
    def run() -> None:
        for _ in range(repeats):
            fn()
    return run


def _torch_probe(precision: str, m: int, k: int, n: int, seed: int, repeats: int) -> Callable[[], None]:
    from .environment import native_bf16

    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    if precision not in dtypes:
        raise RuntimeError(f"torch has no {precision} product on the CPU")
    dtype = dtypes[precision]
    if precision == "bf16" and not native_bf16():
        raise RuntimeError("this CPU has no bfloat16 instructions (torch would emulate them)")
    generator = torch.Generator().manual_seed(seed)
    a = torch.randn(m, k, generator=generator).to(dtype)
    b = (torch.randn(k, n, generator=generator) / k ** 0.5).to(dtype)

    def product() -> None:
        with torch.inference_mode():
            torch.matmul(a, b)

    return _repeat(product, repeats)


def _onnxruntime_probe(precision: str, graph: Path, x: np.ndarray, threads: int, repeats: int
                       ) -> Callable[[], None]:
    import onnxruntime as ort

    from clippy_rt.backends.onnxruntime import session_options

    if precision not in ("fp32", "int8"):
        raise RuntimeError(f"ONNX Runtime's CPU provider has no {precision} product")
    if precision == "int8":
        from clippy_rt.export.int8 import quantize_int8

        quantized = graph.with_name(graph.stem + ".int8.onnx")
        if not quantized.exists():
            quantize_int8(graph, quantized)
        graph = quantized
    session = ort.InferenceSession(str(graph), sess_options=session_options(threads),
                                   providers=["CPUExecutionProvider"])
    return _repeat(lambda: session.run(["y"], {"x": x}), repeats)


def _openvino_probe(precision: str, graph: Path, x: np.ndarray, threads: int, repeats: int, seed: int
                    ) -> Callable[[], None]:
    import openvino as ov

    from clippy_rt.backends.openvino import compile_settings, cpu_capabilities

    core = ov.Core()
    if precision == "bf16" and "BF16" not in cpu_capabilities(core):
        raise RuntimeError("this CPU has no bfloat16 instructions")
    model = core.read_model(str(graph))
    if precision == "int8":
        import nncf

        rng = np.random.default_rng(seed + 1)
        feeds = [{"x": rng.standard_normal(x.shape).astype(np.float32)} for _ in range(4)]
        with contextlib.redirect_stdout(sys.stderr):  # NNCF's progress bars: not part of a report
            model = nncf.quantize(model, nncf.Dataset(feeds), subset_size=len(feeds))
    compiled = core.compile_model(model, "CPU", compile_settings(precision, threads))
    request = compiled.create_infer_request()
    return _repeat(lambda: request.infer({"x": x}), repeats)


def build_probes(wanted: Sequence[Tuple[str, str]], shape: Tuple[int, int, int], threads: int,
                 workdir: Optional[Path],
                 *, seed: int = 0, repeats: int = 3, log: Callable[[str], None] = lambda message: None
                 ) -> Tuple[List[GemmProbe], Dict[str, str]]:
    """Probes for each (runtime, precision) in ``wanted`` ("torch", "onnxruntime" or
    "openvino"; "fp32", "bf16" or "int8") at ``shape`` = (M, K, N); ``workdir`` holds the
    probe's ONNX graph (only needed for the exported runtimes). Returns (the probes,
    {name: why it could not be built} for the others)."""
    m, k, n = shape
    x = np.random.default_rng(seed).standard_normal((m, k)).astype(np.float32)
    probes: List[GemmProbe] = []
    missing: Dict[str, str] = {}
    flops = 2.0 * m * k * n * repeats

    def onnx_graph() -> Path:
        graph = Path(workdir) / f"gemm-{m}x{k}x{n}.onnx"
        if not graph.exists():
            _matmul_onnx(graph, m, k, n, seed)
        return graph

    builders = {
        "torch": lambda precision: _torch_probe(precision, m, k, n, seed, repeats),
        "onnxruntime": lambda precision: _onnxruntime_probe(precision, onnx_graph(), x, threads, repeats),
        "openvino": lambda precision: _openvino_probe(precision, onnx_graph(), x, threads, repeats, seed),
    }
    for runtime, precision in wanted:
        name = f"{runtime} {precision}"
        try:
            if runtime not in builders:
                raise RuntimeError("no probe for this runtime on the CPU")
            run = builders[runtime](precision)
            run()  # first call: allocation, JIT and kernel selection stay out of the timings
        except Exception as exc:  # a probe that cannot run here is reported, not fatal
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            missing[name] = f"{type(exc).__name__}: {first}"
            log(f"no GEMM probe {name}: {missing[name]}")
            continue
        probes.append(GemmProbe(name, precision, run, flops))
    return probes, missing


def gemm_limits(rates_gflops: Dict[str, float], probes: Sequence[GemmProbe]) -> Dict[str, Tuple[str, float]]:
    """{precision: (the fastest probe's name, its rate in GFLOP/s)} from measured ``rates_gflops``
    (per probe name)."""
    limits: Dict[str, Tuple[str, float]] = {}
    for probe in probes:
        rate = rates_gflops.get(probe.name)
        if rate is None:
            continue
        if probe.precision not in limits or rate > limits[probe.precision][1]:
            limits[probe.precision] = (probe.name, rate)
    return limits


def fraction_of_limit(flops: float, median_ms: float, limit_gflops: Optional[float]) -> Optional[float]:
    """The rate ``flops`` in ``median_ms`` reaches, as a fraction of ``limit_gflops`` (None without a limit)."""
    if limit_gflops is None or limit_gflops <= 0 or median_ms <= 0:
        return None
    return flops / (median_ms * 1e6) / limit_gflops
