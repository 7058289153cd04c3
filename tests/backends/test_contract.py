"""One backend contract: the same bad input gives the same error, word for word, on every
backend installed here (torch always; onnxruntime, openvino and tensorrt where they load)."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import threading

import pytest
import torch

import clippy_rt
from clippy_rt.backends import REGISTRY
from clippy_rt.errors import InputError

# The tiny model: patch 8, vocabulary 512, max_length 32.
I64 = torch.int64
IMAGE_CASES = [
    ({"pixel_values": torch.zeros(1, 3, 32, 32, dtype=I64)},
     "input 'pixel_values' must be float32, got int64"),
    ({"pixel_values": torch.zeros(3, 32, 32)},
     "input 'pixel_values' must have shape [batch, 3, height, width] (4 dimensions), got (3, 32, 32)"),
    ({"pixel_values": torch.zeros(1, 4, 32, 32)},
     "input 'pixel_values' dimension 1 must be 3 (shape [batch, 3, height, width]), got (1, 4, 32, 32)"),
    ({"pixel_values": torch.zeros(1, 3, 36, 32)},
     "pixel_values height and width must be multiples of the patch size 8, got 36x32"),
    ({"pixels": torch.zeros(1, 3, 32, 32)},
     "image graph takes inputs pixel_values; missing ['pixel_values'], unexpected ['pixels']"),
]
TEXT_CASES = [
    ({"input_ids": torch.full((2, 4), 512, dtype=I64), "attention_mask": torch.ones(2, 4, dtype=I64)},
     "input_ids must lie in [0, 512), got values in [512, 512]"),
    ({"input_ids": torch.ones(2, 40, dtype=I64), "attention_mask": torch.ones(2, 40, dtype=I64)},
     "prompt length 40 exceeds the model's max_length 32"),
    ({"input_ids": torch.ones(2, 5, dtype=I64), "attention_mask": torch.ones(2, 4, dtype=I64)},
     "input 'attention_mask' dimension 1 (length) is 4 but another input binds length = 5"),
    ({"input_ids": torch.ones(2, 4, dtype=torch.int32), "attention_mask": torch.ones(2, 4, dtype=I64)},
     "input 'input_ids' must be int64, got int32"),
]
ENGINE_CASES = [
    (lambda engine: engine.encode_image(torch.zeros(1, 3, 36, 32)), "multiple"),
    (lambda engine: engine.encode_text(["a cat", ""]), "prompt 1 is empty"),
    (lambda engine: engine.segment(torch.zeros(1, 3, 32, 32), []), None),
]


def _installed():
    backends = ["torch"]
    if importlib.util.find_spec("onnxruntime") and importlib.util.find_spec("onnx"):
        backends.append("onnxruntime")
    if importlib.util.find_spec("openvino") and importlib.util.find_spec("onnx"):
        backends.append("openvino")
    if importlib.util.find_spec("tensorrt") and torch.cuda.is_available():
        backends.append("tensorrt")
    return backends


@pytest.fixture(scope="module")
def artifacts(tiny_model_dir, tmp_path_factory):
    paths = {"torch": tiny_model_dir}
    if set(_installed()) - {"torch"}:
        from clippy_rt.export.onnx import export_onnx

        # One ONNX directory, read by ONNX Runtime and OpenVINO alike.
        paths["onnxruntime"] = paths["openvino"] = tmp_path_factory.mktemp("contract") / "onnx"
        export_onnx(tiny_model_dir, paths["onnxruntime"], check_sizes=[32], check_batches=[1], seg_head=False)
    if "tensorrt" in _installed():
        from clippy_rt.export.tensorrt import BuildSettings, build_engines

        paths["tensorrt"] = tmp_path_factory.mktemp("contract") / "engine"
        build_engines(paths["onnxruntime"], paths["tensorrt"], BuildSettings())
    return paths


@pytest.fixture(scope="module", params=_installed())
def engine(request, artifacts, tmp_path_factory):
    if request.param == "openvino":
        from clippy_rt.backends.openvino import load_openvino

        return load_openvino(artifacts["openvino"], cache_dir=tmp_path_factory.mktemp("ov-cache"))
    return clippy_rt.load(artifacts[request.param], backend=request.param)


@pytest.mark.parametrize("feed,message", IMAGE_CASES)
def test_bad_image_feed_same_error_everywhere(engine, feed, message):
    with pytest.raises(InputError, match=f"^{re.escape(message)}$"):
        engine.image_runner.infer_torch(feed)


@pytest.mark.parametrize("feed,message", TEXT_CASES)
def test_bad_text_feed_same_error_everywhere(engine, feed, message):
    with pytest.raises(InputError, match=f"^{re.escape(message)}$"):
        engine.text_runner.infer_torch(feed)


def test_engine_stages_reject_bad_input_alike(engine, artifacts):
    # The torch engine's messages are the reference for every other backend.
    reference = clippy_rt.load(artifacts["torch"])
    for call, fragment in ENGINE_CASES:
        with pytest.raises(InputError) as expected:
            call(reference)
        with pytest.raises(InputError) as got:
            call(engine)
        assert str(got.value) == str(expected.value)
        if fragment is not None:
            assert fragment in str(got.value)


def test_good_feed_passes_and_names_outputs_by_the_spec(engine):
    out = engine.image_runner.infer_torch({"pixel_values": torch.zeros(2, 3, 32, 40)})
    assert set(out) == {"patch_features", "image_embeds"}
    assert tuple(out["patch_features"].shape) == (2, 4 * 5, 32)
    norms = out["image_embeds"].float().norm(dim=-1)
    torch.testing.assert_close(norms, torch.ones(2), rtol=0, atol=1e-3)


def test_threads_share_one_engine(engine):
    pixels = torch.randn(2, 3, 32, 48, generator=torch.Generator().manual_seed(9))
    expected = engine.encode_image(pixels).pooled
    results, errors = [], []

    def work():
        try:
            for _ in range(3):
                results.append(engine.encode_image(pixels).pooled)
        except Exception as exc:  # collected and re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(results) == 9
    for result in results:
        torch.testing.assert_close(result, expected, rtol=0, atol=0)


# The module each optional backend imports first, and the extra that provides it.
DEPENDENCIES = [("onnxruntime", "onnxruntime", "onnx"), ("openvino", "openvino", "openvino")]


@pytest.mark.parametrize("backend,module,extra", DEPENDENCIES)
def test_a_missing_runtime_names_its_extra(artifacts, backend, module, extra):
    if backend not in artifacts:
        pytest.skip("no ONNX directory: the exporter needs onnx and onnxruntime")
    assert REGISTRY[backend].extra == extra
    code = (
        "import sys\n"
        f"sys.modules[{module!r}] = None\n"
        "import clippy_rt\n"
        "try:\n"
        f"    clippy_rt.load({str(artifacts[backend])!r}, backend={backend!r})\n"
        "except clippy_rt.BackendUnavailableError as exc:\n"
        "    print('refused:', exc)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"refused: backend {backend!r} needs the {backend} package" in result.stdout
    assert f"pip install 'clippy-rt[{extra}]'" in result.stdout
