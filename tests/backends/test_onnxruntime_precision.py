"""``precision="fp16"`` on ONNX Runtime runs the float16 graphs, checked from the outside:
the engine's outputs are those of a session the test opens on the float16 file the
manifest lists, and not those of the float32 file."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import clippy_rt  # noqa: E402

from tolerances import TOLERANCES  # noqa: E402


def _files_by_precision(onnx_dir):
    files = json.loads((onnx_dir / "manifest.json").read_text())["files"]
    return {(entry["graph"], entry["precision"]): onnx_dir / name for name, entry in files.items()
            if "graph" in entry}


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_fp16_engine_runs_the_float16_graphs(tiny_onnx_dir, tiny_model_dir):
    onnx = pytest.importorskip("onnx")
    files = _files_by_precision(tiny_onnx_dir)
    initializers = {init.data_type for init in onnx.load(str(files[("image", "fp16")])).graph.initializer}
    assert onnx.TensorProto.FLOAT16 in initializers  # the file really is a float16 graph

    engine = clippy_rt.load(tiny_onnx_dir, backend="onnxruntime", precision="fp16")
    assert engine.precision == "fp16"
    pixels = torch.randn(2, 3, 32, 48, generator=torch.Generator().manual_seed(3))
    got = engine.encode_image(pixels)
    half = _session(files[("image", "fp16")]).run(None, {"pixel_values": pixels.numpy()})
    full = _session(files[("image", "fp32")]).run(None, {"pixel_values": pixels.numpy()})
    torch.testing.assert_close(got.pooled, torch.from_numpy(half[1]), atol=1e-6, rtol=0)
    assert float((got.pooled - torch.from_numpy(full[1])).abs().max()) > 1e-5

    prompts = ["cat", "a dog on grass", "sky"]
    ids, mask = engine.tokenizer.encode(prompts)
    feed = {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}
    engine.clear_text_cache()
    text = engine.encode_text(prompts)
    torch.testing.assert_close(text, torch.from_numpy(_session(files[("text", "fp16")]).run(None, feed)[0]),
                               atol=1e-6, rtol=0)
    assert float((text - torch.from_numpy(_session(files[("text", "fp32")]).run(None, feed)[0])).abs().max()) > 1e-6

    # and it is still the model: within the measured float16 tolerance of torch float32
    reference = clippy_rt.load(tiny_model_dir)
    torch.testing.assert_close(got.pooled, reference.encode_image(pixels).pooled, **TOLERANCES[torch.float16])


def test_fp32_engine_runs_the_float32_graphs(tiny_onnx_dir):
    files = _files_by_precision(tiny_onnx_dir)
    engine = clippy_rt.load(tiny_onnx_dir, backend="onnxruntime", precision="fp32")
    pixels = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(8))
    full = _session(files[("image", "fp32")]).run(None, {"pixel_values": pixels.numpy()})
    torch.testing.assert_close(engine.encode_image(pixels).pooled, torch.from_numpy(full[1]), atol=1e-6, rtol=0)
