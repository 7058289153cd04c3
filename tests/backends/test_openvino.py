"""The OpenVINO backend against the torch backend and against OpenVINO run directly on the
files the manifest lists: parity, precisions, the int8 graphs' calibration record, the
compiled-model cache and broken directories."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

pytest.importorskip("onnx", reason="the ONNX exporter needs onnx (pip install 'clippy-rt[onnx]')")
ov = pytest.importorskip("openvino", reason="the openvino backend needs openvino (pip install 'clippy-rt[openvino]')")

import clippy_rt  # noqa: E402
from clippy_rt.backends import openvino as ov_backend  # noqa: E402
from clippy_rt.backends.openvino import load_openvino  # noqa: E402
from clippy_rt.datasets.calibration import calibration_set  # noqa: E402
from clippy_rt.errors import BackendUnavailableError, InputError, ModelDirError  # noqa: E402
from clippy_rt.export.onnx import export_onnx  # noqa: E402

from tolerances import TOLERANCES  # noqa: E402

# The tiny model: patch 8, trained grid 4x4 (32 px), embedding width 32, max_length 32.
SHAPES = [(1, 32, 32), (3, 48, 64)]
HAS_NNCF = __import__("importlib.util").util.find_spec("nncf") is not None


@pytest.fixture(scope="module")
def onnx_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model with ONNX Runtime's and OpenVINO's int8 graphs (16 generated scenes)."""
    if not HAS_NNCF:
        pytest.skip("OpenVINO int8 graphs need nncf (pip install 'clippy-rt[openvino]')")
    out = tmp_path_factory.mktemp("ov") / "tiny-onnx"
    export_onnx(tiny_model_dir, out, int8=True, openvino_int8=True, calibration=calibration_set(None, 16),
                check_sizes=[32], check_batches=[1], seg_head=False)
    return out


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("ov-cache")


@pytest.fixture(scope="module")
def engines(onnx_dir, cache):
    return {precision: load_openvino(onnx_dir, precision=precision, cache_dir=cache) for precision in ("fp32", "int8")}


@pytest.fixture(scope="module")
def torch_engine(tiny_model_dir):
    return clippy_rt.load(tiny_model_dir, backend="torch")


def _manifest(path):
    return json.loads((path / "manifest.json").read_text())


def _direct(path, feed):
    """OpenVINO on one graph file, with no clippy-rt code in between (float32 hint)."""
    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    results = compiled.create_infer_request().infer(feed)
    return [torch.from_numpy(results[port]) for port in compiled.outputs]


@pytest.mark.parametrize("batch,height,width", SHAPES)
def test_fp32_image_tower_matches_torch(engines, torch_engine, batch, height, width):
    pixels = torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(batch + height))
    got, expected = engines["fp32"].encode_image(pixels), torch_engine.encode_image(pixels)
    assert got.patch.shape == (batch, height // 8, width // 8, 32) and got.patch.dtype == torch.float32
    torch.testing.assert_close(got.patch, expected.patch, **TOLERANCES[torch.float32])
    torch.testing.assert_close(got.pooled, expected.pooled, **TOLERANCES[torch.float32])


@pytest.mark.parametrize("count", [1, 20])
def test_fp32_text_tower_matches_torch(engines, torch_engine, count):
    prompts = [f"a red circle and {i} stars on grass" for i in range(count)]
    engines["fp32"].clear_text_cache()
    torch.testing.assert_close(engines["fp32"].encode_text(prompts), torch_engine.encode_text(prompts),
                               **TOLERANCES[torch.float32])


def test_segment_matches_torch(engines, torch_engine):
    image = (torch.rand(40, 56, 3, generator=torch.Generator().manual_seed(5)) * 255).to(torch.uint8).numpy()
    classes = ["cat", "dog", "car", "tree"]
    got = engines["fp32"].segment(image, classes, size=(32, 48))
    expected = torch_engine.segment(image, classes, size=(32, 48))
    assert (got.labels == expected.labels).float().mean() >= 0.99


def test_int8_engine_runs_the_recorded_int8_graphs(onnx_dir, engines, torch_engine):
    manifest = _manifest(onnx_dir)
    entry = manifest["openvino_int8"]
    # Recorded: the calibration set (generated scenes by default) and the files, hashed.
    assert entry["calibration"]["images"] == entry["calibration"]["prompts"] == 16
    assert entry["calibration"]["source"].startswith("generated scenes")
    assert len(entry["calibration"]["sha256"]) == 64
    for name in ("image.int8.ov.xml", "image.int8.ov.bin", "text.int8.ov.xml", "text.int8.ov.bin"):
        assert len(manifest["files"][name]["sha256"]) == 64
    assert all(record["fake_quantize_nodes"] > 0 for record in entry["graphs"].values())

    pixels = torch.randn(2, 3, 32, 48, generator=torch.Generator().manual_seed(3))
    got = engines["int8"].encode_image(pixels)
    quantized = _direct(onnx_dir / entry["files"]["image"], {"pixel_values": pixels.numpy()})
    full = _direct(onnx_dir / "image.onnx", {"pixel_values": pixels.numpy()})
    torch.testing.assert_close(got.pooled, quantized[1], atol=1e-6, rtol=0)
    assert float((got.pooled - full[1]).abs().max()) > 1e-4  # not the float32 graph
    # and still the model: the embeddings point the same way as torch float32's
    reference = torch_engine.encode_image(pixels)
    cosine = torch.nn.functional.cosine_similarity(got.patch.flatten(0, 2), reference.patch.flatten(0, 2), dim=-1)
    assert float(cosine.min()) > 0.95

    prompts = ["a star", "a circle on grass"]
    engines["int8"].clear_text_cache()
    ids, mask = engines["int8"].tokenizer.encode(prompts)
    text = _direct(onnx_dir / entry["files"]["text"], {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
    torch.testing.assert_close(engines["int8"].encode_text(prompts), text[0], atol=1e-6, rtol=0)


def test_user_calibration_images_are_recorded(tiny_model_dir, tmp_path):
    if not HAS_NNCF:
        pytest.skip("OpenVINO int8 graphs need nncf (pip install 'clippy-rt[openvino]')")
    from PIL import Image

    folder = tmp_path / "calibration"
    folder.mkdir()
    for index in range(3):
        pixels = np.random.default_rng(index).integers(0, 255, (40, 40, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{index}.png")
    images, prompts, source = calibration_set(folder, 64)
    assert len(images) == 3 and source == "3 images of calibration"
    out = tmp_path / "onnx"
    export_onnx(tiny_model_dir, out, openvino_int8=True, calibration=(images, prompts, source), check_sizes=[32],
                check_batches=[1], seg_head=False)
    recorded = _manifest(out)["openvino_int8"]["calibration"]
    assert (recorded["images"], recorded["source"]) == (3, source)
    assert _manifest(out)["precisions"] == ["fp32"]  # ONNX Runtime's int8 was not asked for
    with pytest.raises(InputError, match="calibration images"):
        export_onnx(tiny_model_dir, tmp_path / "none", openvino_int8=True, seg_head=False)


def test_compiled_models_are_cached_on_disk(onnx_dir, tmp_path):
    first = load_openvino(onnx_dir, cache_dir=tmp_path)
    assert not first.image_runner.loaded_from_cache
    assert any(tmp_path.iterdir())
    restarted = load_openvino(onnx_dir, cache_dir=tmp_path)
    assert restarted.image_runner.loaded_from_cache and restarted.text_runner.loaded_from_cache
    pixels = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(restarted.encode_image(pixels).pooled, first.encode_image(pixels).pooled,
                               atol=0, rtol=0)


def test_bf16_only_where_the_cpu_has_it(onnx_dir, cache, monkeypatch, torch_engine):
    if "BF16" in ov_backend.cpu_capabilities():
        engine = load_openvino(onnx_dir, precision="bf16", cache_dir=cache)
        pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(6))
        torch.testing.assert_close(engine.encode_image(pixels).pooled, torch_engine.encode_image(pixels).pooled,
                                   **TOLERANCES[torch.bfloat16])
    monkeypatch.setattr(ov_backend, "cpu_capabilities", lambda core=None: ("FP32", "INT8"))
    with pytest.raises(BackendUnavailableError, match="bf16 needs a CPU with bfloat16 instructions.*FP32, INT8"):
        load_openvino(onnx_dir, precision="bf16", cache_dir=cache)


def test_compile_settings_are_deliberate():
    settings = ov_backend.compile_settings("fp32")
    assert settings["INFERENCE_PRECISION_HINT"] == "f32"  # never a silent bf16 for fp32
    assert settings["NUM_STREAMS"] == 1 and settings["INFERENCE_NUM_THREADS"] >= 1
    assert ov_backend.compile_settings("bf16", threads=1) == dict(settings, INFERENCE_PRECISION_HINT="bf16",
                                                                  INFERENCE_NUM_THREADS=1)
    with pytest.raises(InputError, match="threads"):
        ov_backend.compile_settings("fp32", threads=0)


def test_arguments_and_directories_are_checked(onnx_dir, tiny_model_dir, tmp_path, cache):
    with pytest.raises(InputError, match="serves precision 'fp32', 'bf16', 'int8', got 'fp16'"):
        load_openvino(onnx_dir, precision="fp16", cache_dir=cache)
    with pytest.raises(BackendUnavailableError, match="runs on the CPU"):
        load_openvino(onnx_dir, device="cuda", cache_dir=cache)
    with pytest.raises(ModelDirError, match="export it first"):
        load_openvino(tiny_model_dir, cache_dir=cache)
    plain = tmp_path / "plain"
    export_onnx(tiny_model_dir, plain, check_sizes=[32], check_batches=[1], seg_head=False)
    with pytest.raises(ModelDirError, match="no OpenVINO int8 graphs; re-export with .*--openvino-int8"):
        load_openvino(plain, precision="int8", cache_dir=cache)


def _corrupt_copy(onnx_dir, tmp_path, name):
    copy = shutil.copytree(onnx_dir, tmp_path / "copy")
    data = bytearray((copy / name).read_bytes())
    data[100:4000] = b"\xff" * len(data[100:4000])
    (copy / name).write_bytes(bytes(data))
    return copy


def test_corrupt_int8_weights_are_reported(onnx_dir, tmp_path, cache):
    copy = _corrupt_copy(onnx_dir, tmp_path, "image.int8.ov.bin")
    with pytest.raises(ModelDirError, match="image.int8.ov.bin does not match its sha256"):
        load_openvino(copy, precision="int8", cache_dir=cache)
    manifest = _manifest(copy)
    manifest["files"].pop("text.int8.ov.bin")
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelDirError, match="does not list text.int8.ov.bin"):
        load_openvino(copy, precision="int8", cache_dir=cache)


def test_unreadable_graph_is_reported(onnx_dir, tmp_path, cache):
    copy = _corrupt_copy(onnx_dir, tmp_path, "text.onnx")
    with pytest.raises(ModelDirError, match="text.onnx cannot be loaded by OpenVINO"):
        load_openvino(copy, verify_checksums=False, cache_dir=tmp_path / "cache")
