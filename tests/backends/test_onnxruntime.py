"""The ONNX Runtime backend against the torch backend, feed validation and broken directories."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import clippy_rt  # noqa: E402
from clippy_rt.backends.onnxruntime import OrtRunner, physical_cores, session_options  # noqa: E402
from clippy_rt.errors import BackendUnavailableError, InputError, ModelDirError  # noqa: E402
from clippy_rt.formats import io_spec  # noqa: E402
from clippy_rt.export.onnx import export_onnx  # noqa: E402

from tolerances import TOLERANCES  # noqa: E402

# The tiny model: patch 8, trained grid 4x4 (32 px), embedding width 32, max_length 32.
SHAPES = [(1, 32, 32), (3, 32, 32), (1, 48, 64), (3, 48, 64)]


@pytest.fixture(scope="module")
def onnx_dir(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ort") / "tiny-onnx"
    export_onnx(tiny_model_dir, out, fp16=True, check_sizes=[32], check_batches=[1], seg_head=False)
    return out


@pytest.fixture(scope="module")
def torch_engine(tiny_model_dir):
    return clippy_rt.load(tiny_model_dir, backend="torch")


@pytest.fixture(scope="module")
def engines(onnx_dir):
    return {precision: clippy_rt.load(onnx_dir, backend="onnxruntime", precision=precision)
            for precision in ("fp32", "fp16")}


def _copy(onnx_dir, tmp_path):
    return shutil.copytree(onnx_dir, tmp_path / "copy")


def _prompts(count):
    words = ["cat", "dog", "a red car on a road", "tree", "the sky above the hills", "boat", "person"]
    return [" ".join(words[(i + j) % len(words)] for j in range(1 + i % 5)) + f" {i}" for i in range(count)]


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("batch,height,width", SHAPES)
def test_image_tower_matches_torch(engines, torch_engine, precision, batch, height, width):
    pixels = torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(batch * height + width))
    expected = torch_engine.encode_image(pixels)
    got = engines[precision].encode_image(pixels)
    tol = TOLERANCES[torch.float32 if precision == "fp32" else torch.float16]
    assert got.patch.shape == (batch, height // 8, width // 8, 32) and got.patch.dtype == torch.float32
    torch.testing.assert_close(got.patch, expected.patch, **tol)
    torch.testing.assert_close(got.pooled, expected.pooled, **tol)
    prompts = _prompts(12)
    labels = (got.patch @ engines[precision].encode_text(prompts).T).argmax(-1)
    labels_ref = (expected.patch @ torch_engine.encode_text(prompts).T).argmax(-1)
    assert (labels == labels_ref).float().mean() >= 0.99


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("count", [1, 50])
def test_text_tower_matches_torch(engines, torch_engine, precision, count):
    prompts = _prompts(count)
    engine = engines[precision]
    engine.clear_text_cache()
    tol = TOLERANCES[torch.float32 if precision == "fp32" else torch.float16]
    got = engine.encode_text(prompts)
    assert got.shape == (count, 32)
    torch.testing.assert_close(got, torch_engine.encode_text(prompts), **tol)


def test_segment_and_classify_match_torch(engines, torch_engine):
    image = (torch.rand(40, 56, 3, generator=torch.Generator().manual_seed(5)) * 255).to(torch.uint8).numpy()
    classes = ["cat", "dog", "car", "tree"]
    got = engines["fp32"].segment(image, classes, size=(32, 48))
    expected = torch_engine.segment(image, classes, size=(32, 48))
    assert got.labels.shape == (40, 56)
    assert (got.labels == expected.labels).float().mean() >= 0.99
    top = engines["fp32"].classify(image, classes, top_k=4)
    top_ref = torch_engine.classify(image, classes, top_k=4)
    assert [name for name, _ in top] == [name for name, _ in top_ref]
    torch.testing.assert_close(torch.tensor([p for _, p in top]), torch.tensor([p for _, p in top_ref]),
                               **TOLERANCES[torch.float32])


@pytest.mark.parametrize("feed,message", [
    ({"pixel_values": np.zeros((1, 3, 32, 32), np.float64)}, "must be float32, got float64"),
    ({"pixel_values": np.zeros((1, 3, 32, 32), np.float16)}, "must be float32, got float16"),
    ({"pixel_values": np.zeros((1, 4, 32, 32), np.float32)}, "dimension 1 must be 3"),
    ({"pixel_values": np.zeros((3, 32, 32), np.float32)}, r"must have shape \[batch, 3, height, width\]"),
    ({"pixel_values": np.zeros((1, 3, 36, 32), np.float32)}, "multiples of the patch size 8"),
    ({"pixel_values": np.zeros((0, 3, 32, 32), np.float32)}, "empty dimension 0"),
    ({"pixels": np.zeros((1, 3, 32, 32), np.float32)}, "missing"),
    ({"pixel_values": [[0.0]]}, "numpy array or a torch tensor"),
])
def test_bad_image_feeds_raise_input_error(onnx_dir, engines, feed, message):
    runner = engines["fp32"].image_runner
    with pytest.raises(InputError, match=message):
        runner.infer(feed)


@pytest.mark.parametrize("ids,mask,message", [
    (np.ones((2, 5), np.int32), np.ones((2, 5), np.int64), "input_ids.* must be int64, got int32"),
    (np.ones((2, 5), np.int64), np.ones((2, 5), np.float32), "attention_mask.* must be int64, got float32"),
    (np.ones((2, 5), np.int64), np.ones((2, 6), np.int64), "length.* is 6 but another input binds length = 5"),
    (np.ones((2, 33), np.int64), np.ones((2, 33), np.int64), "exceeds the model's max_length 32"),
    (np.full((1, 3), 512, np.int64), np.ones((1, 3), np.int64), r"must lie in \[0, 512\)"),
    (np.ones((5,), np.int64), np.ones((5,), np.int64), "must have shape"),
])
def test_bad_text_feeds_raise_input_error(engines, ids, mask, message):
    with pytest.raises(InputError, match=message):
        engines["fp32"].text_runner.infer({"input_ids": ids, "attention_mask": mask})


def test_tensor_feeds_are_validated_too(engines):
    with pytest.raises(InputError, match="must be int64, got int32"):
        engines["fp32"]._text_forward(torch.ones(1, 4, dtype=torch.int32), torch.ones(1, 4, dtype=torch.int64))


def test_truncated_graph_is_reported(onnx_dir, tmp_path):
    copy = _copy(onnx_dir, tmp_path)
    data = (copy / "image.onnx").read_bytes()
    (copy / "image.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelDirError, match="image.onnx has .* bytes but manifest.json records .*truncated"):
        clippy_rt.load(copy, backend="onnxruntime")


def test_corrupt_graph_is_reported(onnx_dir, tmp_path):
    copy = _copy(onnx_dir, tmp_path)
    data = bytearray((copy / "text.onnx").read_bytes())
    data[100:4000] = b"\xff" * 3900
    (copy / "text.onnx").write_bytes(bytes(data))
    with pytest.raises(ModelDirError, match="text.onnx does not match its sha256"):
        clippy_rt.load(copy, backend="onnxruntime")
    # Without the checksum, ONNX Runtime's own failure is still reported as ours.
    from clippy_rt.backends.onnxruntime import load_onnxruntime

    with pytest.raises(ModelDirError, match="text.onnx cannot be loaded by ONNX Runtime"):
        load_onnxruntime(copy, verify_checksums=False)


def _edit_manifest(path, edit):
    manifest = json.loads((path / "manifest.json").read_text())
    edit(manifest)
    (path / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("edit,message", [
    (lambda m: m["files"].pop("text.onnx"), "lists precision fp32 but no text.onnx"),
    (lambda m: m["files"].update({"extra.onnx": {"bytes": 1, "sha256": "0"}}), "extra.onnx is missing"),
    (lambda m: m["config"]["image"].update(depth=3), "does not match the config in manifest.json"),
    (lambda m: m["graphs"]["image"]["outputs"][0].update(name="features"), "do not match this clippy-rt's I/O spec"),
    (lambda m: m.update(format_version=99), "format_version 99"),
    (lambda m: m.update(format="something-else"), "not a clippy-rt ONNX manifest"),
    (lambda m: m.pop("logit_scale"), "lacks the 'logit_scale' entry"),
])
def test_manifest_mismatch_is_reported(onnx_dir, tmp_path, edit, message):
    copy = _copy(onnx_dir, tmp_path)
    _edit_manifest(copy, edit)
    with pytest.raises(ModelDirError, match=message):
        clippy_rt.load(copy, backend="onnxruntime")


def test_graph_with_other_tensor_names_is_refused(onnx_dir, tmp_path):
    import hashlib

    import onnx

    copy = _copy(onnx_dir, tmp_path)
    model = onnx.load(str(copy / "image.onnx"))
    old = model.graph.output[1].name
    model.graph.output[1].name = "pooled"
    for node in model.graph.node:
        for index, name in enumerate(node.output):
            if name == old:
                node.output[index] = "pooled"
    onnx.save(model, str(copy / "image.onnx"))
    data = (copy / "image.onnx").read_bytes()
    _edit_manifest(copy, lambda m: m["files"]["image.onnx"].update(
        bytes=len(data), sha256=hashlib.sha256(data).hexdigest()))
    with pytest.raises(ModelDirError, match=r"graph outputs are \['patch_features', 'pooled'\]"):
        clippy_rt.load(copy, backend="onnxruntime")


def test_other_directory_problems(onnx_dir, tiny_model_dir, tmp_path):
    with pytest.raises(ModelDirError, match="export it first"):
        clippy_rt.load(tiny_model_dir, backend="onnxruntime")
    copy = _copy(onnx_dir, tmp_path)
    (copy / "manifest.json").write_text("{not json")
    with pytest.raises(ModelDirError, match="not valid JSON"):
        clippy_rt.load(copy, backend="onnxruntime")
    with pytest.raises(ModelDirError, match="not found"):
        clippy_rt.load(tmp_path / "nothing", backend="onnxruntime")
    fp32_only = tmp_path / "fp32-only"
    shutil.copytree(onnx_dir, fp32_only)
    _edit_manifest(fp32_only, lambda m: m.update(precisions=["fp32"]))
    with pytest.raises(ModelDirError, match="re-export with `clippy-rt export ... --fp16`"):
        clippy_rt.load(fp32_only, backend="onnxruntime", precision="fp16")
    with pytest.raises(InputError, match="'fp32' or 'fp16'"):
        clippy_rt.load(onnx_dir, backend="onnxruntime", precision="bf16")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_without_gpu_is_refused(onnx_dir):
    with pytest.raises(BackendUnavailableError, match="CUDA is not available"):
        clippy_rt.load(onnx_dir, backend="onnxruntime", device="cuda")


def test_session_options_are_deliberate():
    options = session_options()
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert options.intra_op_num_threads == physical_cores() >= 1
    assert options.inter_op_num_threads == 1
    assert options.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert session_options(threads=1, optimization="extended").graph_optimization_level == \
        ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    with pytest.raises(InputError, match="optimization"):
        session_options(optimization="fast")
    with pytest.raises(InputError, match="threads"):
        session_options(threads=0)


def test_sessions_do_not_spin_between_runs(engines):
    # The engine's two sessions each own a thread pool; a pool left spinning after the text
    # tower competes with the image tower's for the cores. Read back from the live sessions.
    for engine in engines.values():
        for runner in (engine.image_runner, engine.text_runner):
            options = runner.session.get_session_options()
            assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
            assert options.get_session_config_entry("session.inter_op.allow_spinning") == "0"
    spinning = session_options(spinning=True)
    assert spinning.get_session_config_entry("session.intra_op.allow_spinning") == "1"


def test_runner_checks_the_graph_against_the_spec(onnx_dir, engines):
    with pytest.raises(ModelDirError, match="graph inputs are"):
        OrtRunner(onnx_dir / "image.onnx", io_spec.TEXT, engines["fp32"].config)


def test_disk_text_cache_survives_a_restart_per_precision(onnx_dir, tmp_path):
    prompts = _prompts(4)
    first = clippy_rt.load(onnx_dir, backend="onnxruntime", text_cache_dir=tmp_path)
    embeds = first.encode_text(prompts)
    for precision, expect_encoded in (("fp32", False), ("fp16", True)):
        restarted = clippy_rt.load(onnx_dir, backend="onnxruntime", precision=precision, text_cache_dir=tmp_path)
        calls = []
        original = restarted._text_forward
        restarted._text_forward = lambda ids, mask: calls.append(len(ids)) or original(ids, mask)
        got = restarted.encode_text(prompts)
        assert bool(calls) == expect_encoded
        if not expect_encoded:
            torch.testing.assert_close(got, embeds, rtol=0, atol=0)
    assert len(list(tmp_path.glob("*.sqlite"))) == 1
