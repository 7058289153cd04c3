"""`clippy-rt export --int8`: quantised weights, the manifest, loading and evaluating int8."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import shutil

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import numpy_helper  # noqa: E402

import clippy_rt  # noqa: E402
from clippy_rt.cli.main import main  # noqa: E402
from clippy_rt.errors import InputError, ModelDirError  # noqa: E402
from clippy_rt.export.int8 import quantize_int8  # noqa: E402
from clippy_rt.formats.model_dir import load_model  # noqa: E402


@pytest.fixture(scope="module")
def exported_int8(tiny_model_dir, tmp_path_factory):
    """The tiny model exported through the CLI with --int8 (no float16, no seg head)."""
    out = tmp_path_factory.mktemp("export-int8") / "tiny-onnx"
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        code = main(["export", str(tiny_model_dir), "--out", str(out), "--int8", "--check-sizes", "32",
                     "--check-batches", "2", "--no-seg-head"])
    assert code == 0
    return out


def _weight_matmuls(model):
    """[(weight name, weight array [K, N])] for MatMuls whose B is an initializer."""
    weights = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    return [(node.input[1], weights[node.input[1]]) for node in model.graph.node
            if node.op_type == "MatMul" and node.input[1] in weights]


@pytest.mark.parametrize("graph", ["image", "text"])
def test_weights_are_int8_per_output_channel(exported_int8, graph):
    fp32 = onnx.load(str(exported_int8 / f"{graph}.onnx"))
    int8 = onnx.load(str(exported_int8 / f"{graph}.int8.onnx"))
    originals = _weight_matmuls(fp32)
    assert originals, "the float32 graph has weight MatMuls"
    # No float MatMul with a weight is left, and each became one MatMulInteger.
    assert _weight_matmuls(int8) == []
    assert sum(node.op_type == "MatMulInteger" for node in int8.graph.node) == len(originals)
    quantized = {init.name: numpy_helper.to_array(init) for init in int8.graph.initializer}
    for stem, weight in originals:
        values, scale, zero = (quantized[f"{stem}_{suffix}"] for suffix in ("quantized", "scale", "zero_point"))
        assert values.dtype == np.int8 and values.shape == weight.shape
        # Symmetric, one scale per output channel (column): max |w| / 127.
        np.testing.assert_allclose(scale, np.abs(weight).max(axis=0) / 127.0, rtol=1e-6)
        assert not zero.any()
        # Round to nearest: each weight within half a step of its int8 value.
        assert (np.abs(values.astype(np.float32) * scale - weight) <= scale / 2 * (1 + 1e-5)).all()


def test_manifest_records_int8(exported_int8):
    manifest = json.loads((exported_int8 / "manifest.json").read_text())
    assert manifest["precisions"] == ["fp32", "int8"]
    for graph in ("image", "text"):
        entry = manifest["files"][f"{graph}.int8.onnx"]
        data = (exported_int8 / f"{graph}.int8.onnx").read_bytes()
        assert entry["precision"] == "int8" and entry["graph"] == graph
        assert entry["bytes"] == len(data) and entry["sha256"] == hashlib.sha256(data).hexdigest()
        expected = len(_weight_matmuls(onnx.load(str(exported_int8 / f"{graph}.onnx"))))
        assert manifest["quantization"]["graphs"][graph] == {"quantized_matmuls": expected}
    quantization = manifest["quantization"]
    assert quantization["weights"] == {"dtype": "int8", "symmetric": True, "granularity": "per output channel"}
    assert quantization["op_types"] == ["MatMul"]
    assert {row["precision"] for row in manifest["parity"]} == {"fp32", "int8"}


def test_int8_engine_close_to_torch_but_quantized(exported_int8, tiny_model_dir):
    engine = clippy_rt.load(exported_int8, backend="onnxruntime", precision="int8")
    assert engine.precision == "int8"
    model, _ = load_model(tiny_model_dir)
    generator = torch.Generator().manual_seed(3)
    pixels = torch.randn(2, 3, 32, 48, generator=generator)
    with torch.no_grad():
        patch_ref, pooled_ref = model.visual(pixels)
    out = engine.image_runner.infer({"pixel_values": pixels.numpy()})
    patch = torch.from_numpy(out["patch_features"])
    cosine = torch.nn.functional.cosine_similarity(patch, patch_ref, dim=-1)
    assert cosine.min() > 0.99
    # Really quantised: an int8 file holding the float32 graph would agree to ~1e-7.
    assert (patch - patch_ref).abs().max() > 1e-5
    prompts = ["a photo of a cat", "a dog"]
    ids, mask = engine.tokenizer.encode(prompts)
    with torch.no_grad():
        text_ref = model.text(ids, mask)
    text = engine.encode_text(prompts)
    assert torch.nn.functional.cosine_similarity(text, text_ref, dim=-1).min() > 0.99


def test_int8_missing_from_directory(exported_int8, tmp_path):
    copy = tmp_path / "fp32-only"
    shutil.copytree(exported_int8, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["precisions"] = ["fp32"]
    for graph in ("image", "text"):
        del manifest["files"][f"{graph}.int8.onnx"]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelDirError, match="--int8"):
        clippy_rt.load(copy, backend="onnxruntime", precision="int8")


def test_int8_refused_off_cpu(exported_int8, monkeypatch):
    import clippy_rt.backends.onnxruntime as backend

    monkeypatch.setattr(backend, "resolve_device", lambda device: torch.device("cuda", 0))
    with pytest.raises(InputError, match="CPU only"):
        backend.load_onnxruntime(exported_int8, device="cuda", precision="int8")


def test_quantize_refuses_graph_without_weights(tmp_path):
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"], name="mm")], "g",
                              [helper.make_tensor_value_info("a", TensorProto.FLOAT, [2, 2]),
                               helper.make_tensor_value_info("b", TensorProto.FLOAT, [2, 2])],
                              [helper.make_tensor_value_info("c", TensorProto.FLOAT, [2, 2])])
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "g.onnx"))
    with pytest.raises(ModelDirError, match="no MatMul with a constant weight"):
        quantize_int8(tmp_path / "g.onnx", tmp_path / "g.int8.onnx")


def test_eval_reports_agreement_for_int8(exported_int8, tiny_model_dir, capsys):
    code = main(["eval", str(exported_int8), "--backend", "onnxruntime", "--precision", "int8",
                 "--dataset", "synthetic:3", "--size", "32", "--json", "--no-progress"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["backend"] == "onnxruntime" and result["precision"] == "int8"
    # The same figure by hand: int8 labels against a torch fp32 engine of the source model.
    from clippy_rt.evaluate import open_dataset

    eval_set = open_dataset("synthetic:3")
    images = [image for image, _ in eval_set.samples]
    int8 = clippy_rt.load(exported_int8, backend="onnxruntime", precision="int8")
    fp32 = clippy_rt.load(tiny_model_dir, backend="torch", precision="fp32")
    same = total = 0
    for mine, ref in zip(int8.segment(images, eval_set.prompts, size=32, template="{}"),
                         fp32.segment(images, eval_set.prompts, size=32, template="{}")):
        same += int((mine.labels == ref.labels).sum())
        total += mine.labels.numel()
    assert result["agreement_with_torch_fp32"] == pytest.approx(same / total, abs=1e-12)


def test_static_int8_fixes_activation_ranges_from_the_calibration_feeds(exported_int8, tmp_path):
    import onnxruntime as ort

    from clippy_rt.export.int8 import quantize_int8_static

    source = exported_int8 / "image.onnx"
    rng = np.random.default_rng(0)
    feeds = [{"pixel_values": rng.standard_normal((1, 3, 32, 32)).astype(np.float32)} for _ in range(4)]
    target = tmp_path / "image.static.onnx"
    record = quantize_int8_static(source, target, feeds)
    fp32, static = onnx.load(str(source)), onnx.load(str(target))
    assert record == {"quantized_matmuls": len(_weight_matmuls(fp32))}
    assert _weight_matmuls(static) == []
    # Activation ranges are constants of the graph (a QuantizeLinear with initializer scales), not
    # computed per call as the dynamic scheme does.
    initializers = {init.name for init in static.graph.initializer}
    quantize = [node for node in static.graph.node if node.op_type == "QuantizeLinear"]
    assert quantize and all(node.input[1] in initializers for node in quantize)
    assert not any(node.op_type == "DynamicQuantizeLinear" for node in static.graph.node)
    # Close to the float32 graph on a calibration-like input, not identical to it.
    x = {"pixel_values": feeds[0]["pixel_values"]}
    reference = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"]).run(None, x)[0]
    result = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"]).run(None, x)[0]
    cosine = (reference * result).sum(-1) / (np.linalg.norm(reference, axis=-1) * np.linalg.norm(result, axis=-1))
    assert cosine.min() > 0.99
    assert not np.allclose(reference, result, atol=1e-6)
