"""GEMM probes and the image tower's operation count, against torch's own flop counter and numpy."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from clippy_rt.bench.environment import cpu_flags, cpu_isa, native_bf16
from clippy_rt.bench.gemm import build_probes, fraction_of_limit, gemm_limits, image_tower_flops, probe_shape
from clippy_rt.formats.model_dir import load_model

HAS_ORT = importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnx") is not None
HAS_OPENVINO = importlib.util.find_spec("openvino") is not None


@pytest.mark.parametrize("batch,size", [(1, 32), (2, 48), (3, 40)])
def test_tower_flops_match_torch_flop_counter(tiny_model_dir, batch, size):
    model, info = load_model(tiny_model_dir)
    pixels = torch.randn(batch, 3, size, size)
    # The math attention path is made of matmuls, which the counter sees (the fused CPU kernel
    # it would otherwise pick is not counted).
    with torch.inference_mode(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model.encode_image(pixels)
    # torch counts the convolution, every linear layer and attention's two products, as we do.
    assert image_tower_flops(info.config.image, batch, size) == pytest.approx(counter.get_total_flops(), rel=1e-9)


def test_probe_shape_is_the_first_mlp_layer(tiny_model_dir):
    model, info = load_model(tiny_model_dir)
    cfg = info.config.image
    m, k, n = probe_shape(cfg, 2, 48)
    assert (m, k, n) == (2 * ((48 // cfg.patch_size) ** 2 + 1), cfg.width, cfg.mlp_dim)
    shapes = {tuple(p.shape) for p in model.parameters() if p.ndim == 2}
    assert (n, k) in shapes  # a linear layer's weight [out, in] of exactly this product


def test_limit_is_the_fastest_probe_per_precision_and_fraction_is_rate_over_limit():
    probes, _ = build_probes([("torch", "fp32")], (8, 16, 32), 1, None)
    fp32 = probes[0]
    other = type(fp32)("other fp32", "fp32", fp32.run, fp32.flops)
    limits = gemm_limits({"torch fp32": 50.0, "other fp32": 80.0}, [fp32, other])
    assert limits == {"fp32": ("other fp32", 80.0)}
    # 4e9 operations in 100 ms is 40 GFLOP/s, half of an 80 GFLOP/s limit.
    assert fraction_of_limit(4e9, 100.0, 80.0) == pytest.approx(0.5)
    assert fraction_of_limit(4e9, 100.0, None) is None


def test_probes_that_cannot_run_say_why(tmp_path):
    wanted = [("torch", "int8"), ("tensorrt", "fp32")] + ([] if native_bf16() else [("torch", "bf16")])
    probes, missing = build_probes(wanted, (8, 16, 32), 1, tmp_path)
    assert probes == []
    assert "int8" in missing["torch int8"] and "no probe" in missing["tensorrt fp32"]
    if not native_bf16():
        assert "bfloat16" in missing["torch bf16"]


@pytest.mark.skipif(not HAS_ORT, reason="needs onnxruntime and onnx (pip install 'clippy-rt[onnx]')")
def test_onnx_probe_graph_is_the_product_it_claims(tmp_path):
    import onnxruntime as ort

    from clippy_rt.bench.gemm import _matmul_onnx, _weights

    _matmul_onnx(tmp_path / "g.onnx", 5, 16, 24, seed=3)
    x = np.random.default_rng(0).standard_normal((5, 16)).astype(np.float32)
    session = ort.InferenceSession(str(tmp_path / "g.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"x": x})[0], x @ _weights(16, 24, 3), rtol=1e-5, atol=1e-5)
    probes, missing = build_probes([("onnxruntime", "fp32"), ("onnxruntime", "int8"), ("onnxruntime", "bf16")],
                                   (5, 16, 24), 1, tmp_path)
    assert [p.name for p in probes] == ["onnxruntime fp32", "onnxruntime int8"]
    assert all(p.flops == 2 * 5 * 16 * 24 * 3 for p in probes)
    assert "bf16" in missing["onnxruntime bf16"]
    import onnx

    quantized = onnx.load(str(tmp_path / "gemm-5x16x24.int8.onnx"))
    assert [n.op_type for n in quantized.graph.node].count("MatMulInteger") == 1


@pytest.mark.skipif(not HAS_OPENVINO, reason="needs openvino (pip install 'clippy-rt[openvino]')")
def test_openvino_probes(tmp_path):
    probes, missing = build_probes([("openvino", "fp32"), ("openvino", "bf16")], (5, 16, 24), 1, tmp_path)
    assert probes[0].name == "openvino fp32"
    assert ("openvino bf16" in missing) != ("openvino bf16" in [p.name for p in probes])


CPUINFO = """processor\t: 0
model name\t: Example CPU
flags\t\t: fpu sse avx2 avx512f avx512_vnni avx512_bf16 amx_tile

processor\t: 1
flags\t\t: fpu
"""


def test_cpu_flags_from_cpuinfo_text():
    assert cpu_flags(CPUINFO)[:2] == ["fpu", "sse"]
    assert cpu_isa(CPUINFO) == ["avx2", "avx512f", "avx512_vnni", "avx512_bf16"]
    assert native_bf16(CPUINFO)
    assert not native_bf16("flags : fpu avx2 avx512f avx512_vnni\n")
    assert cpu_flags("model name : x\n") == []
