"""TensorRT: build settings, profiles and the sidecar rules (pure Python, run everywhere), and
the engine build and parity (need TensorRT and a GPU; skipped elsewhere)."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
from pathlib import Path

import pytest
import torch

import clippy_rt
from clippy_rt.cli.main import main
from clippy_rt.config import tiny
from clippy_rt.errors import BackendUnavailableError, InputError, ModelDirError
from clippy_rt.formats import io_spec
from clippy_rt.export.tensorrt import BuildSettings, Range, engine_sidecar, profile_shapes
from clippy_rt.formats.engine_dir import SIDECAR_FILE, RuntimeEnvironment, check_sidecar, read_sidecar

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
needs_tensorrt = pytest.mark.skipif(not HAS_TENSORRT, reason="TensorRT is not installed")

ENV = RuntimeEnvironment(tensorrt_version="10.3.0", gpu_name="NVIDIA A10", compute_capability=(8, 6))


def test_range_parsing():
    assert Range.parse("1,4,8", "batch") == Range(1, 4, 8)
    assert Range.parse("16", "batch") == Range(16, 16, 16)
    for text, message in (("8,4,1", "min <= opt <= max"), ("1,2", "MIN,OPT,MAX"), ("a,b,c", "MIN,OPT,MAX"),
                          ("0,1,2", "positive")):
        with pytest.raises(InputError, match=message):
            Range.parse(text, "batch")


def test_settings_defaults_and_checks():
    cfg = tiny()
    settings = BuildSettings().resolved(cfg)
    assert settings.size == Range(32, 32, 64)
    assert settings.length == Range(1, 16, 32)
    with pytest.raises(InputError, match="multiples of the patch size 8"):
        BuildSettings(size=Range(30, 32, 64)).resolved(cfg)
    with pytest.raises(InputError, match="exceeds the model's max_length 32"):
        BuildSettings(length=Range(1, 8, 64)).resolved(cfg)
    with pytest.raises(InputError, match="--gpu-fallback only applies with --dla-core"):
        BuildSettings(gpu_fallback=True).resolved(cfg)


def test_profiles_cover_every_dynamic_input():
    settings = BuildSettings(batch=Range(1, 2, 4), size=Range(32, 48, 64), prompts=Range(1, 8, 50),
                             length=Range(2, 8, 32)).resolved(tiny())
    image = profile_shapes(io_spec.IMAGE, settings)
    assert image == {"pixel_values": ((1, 3, 32, 32), (2, 3, 48, 48), (4, 3, 64, 64))}
    text = profile_shapes(io_spec.TEXT, settings)
    assert text == {"input_ids": ((1, 2), (8, 8), (50, 32)), "attention_mask": ((1, 2), (8, 8), (50, 32))}


def _sidecar(env=ENV, precision="fp16"):
    settings = BuildSettings(fp16=precision == "fp16").resolved(tiny())
    return engine_sidecar(config=tiny(), logit_scale=2.5, precision=precision, mode="strongly-typed",
                          settings=settings, env=env, onnx_files={}, plans={}, tokenizer="spiece.model",
                          build_seconds=1.0, rebuild_command="clippy-rt build onnx --out engines --fp16")


def test_sidecar_accepts_the_same_environment(tmp_path):
    check_sidecar(_sidecar(), ENV, tmp_path)


@pytest.mark.parametrize("env,message", [
    (RuntimeEnvironment("10.4.0", "NVIDIA A10", (8, 6)), "built with TensorRT 10.3.0, running TensorRT 10.4.0"),
    (RuntimeEnvironment("10.3.0", "NVIDIA L4", (8, 9)), "built for compute capability 8.6"),
    (RuntimeEnvironment("10.3.0", "NVIDIA A10G", (8, 6)), "built on NVIDIA A10, this GPU is NVIDIA A10G"),
])
def test_sidecar_refuses_another_environment_with_the_rebuild_command(tmp_path, env, message):
    with pytest.raises(ModelDirError, match=message) as info:
        check_sidecar(_sidecar(), env, tmp_path)
    assert "clippy-rt build onnx --out engines --fp16" in str(info.value)


def test_sidecar_reading_errors(tmp_path):
    with pytest.raises(ModelDirError, match="not a TensorRT engine directory"):
        read_sidecar(tmp_path)
    (tmp_path / SIDECAR_FILE).write_text("[1, 2")
    with pytest.raises(ModelDirError, match="not valid JSON"):
        read_sidecar(tmp_path)
    sidecar = _sidecar()
    sidecar.pop("plans")
    (tmp_path / SIDECAR_FILE).write_text(json.dumps(sidecar))
    with pytest.raises(ModelDirError, match="lacks the 'plans' entry"):
        read_sidecar(tmp_path)


def test_load_checks_precision_and_device_before_tensorrt(tmp_path):
    (tmp_path / SIDECAR_FILE).write_text(json.dumps(_sidecar(precision="fp16")))
    from clippy_rt.backends.tensorrt import load_tensorrt

    with pytest.raises(InputError, match="built for fp16"):
        load_tensorrt(tmp_path, device="cuda", precision="fp32")
    if not torch.cuda.is_available():
        with pytest.raises(BackendUnavailableError, match="CUDA is not available"):
            load_tensorrt(tmp_path, device="cuda")
    with pytest.raises(InputError, match="run on a CUDA device"):
        load_tensorrt(tmp_path, device="cpu")


def test_onnx_directory_is_not_an_engine_directory(tmp_path):
    (tmp_path / "manifest.json").write_text("{}")
    with pytest.raises(ModelDirError, match="build engines with `clippy-rt build`"):
        clippy_rt.load(tmp_path, backend="tensorrt")


@pytest.mark.skipif(HAS_TENSORRT, reason="checks the message on a machine without TensorRT")
def test_build_without_tensorrt_says_so(tmp_path):
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        code = main(["build", str(tmp_path), "--out", str(tmp_path / "engines")])
    assert code == 1
    assert "TensorRT is not installed" in stderr.getvalue()
    assert not (tmp_path / "engines").exists()


# ----------------------------------------------------------------------------------------------
# Needs TensorRT and a GPU
# ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def engine_dirs(tiny_model_dir, tmp_path_factory):
    from clippy_rt.export.onnx import export_onnx
    from clippy_rt.export.tensorrt import build_engines

    root = tmp_path_factory.mktemp("trt")
    onnx_dir = export_onnx(tiny_model_dir, root / "onnx", fp16=True, check_sizes=[32], check_batches=[1]).path
    settings = dict(batch=Range(1, 2, 4), size=Range(32, 32, 64), prompts=Range(1, 8, 64), timing_cache=root / "cache")
    return {precision: build_engines(onnx_dir, root / precision, BuildSettings(fp16=precision == "fp16", **settings))
            for precision in ("fp32", "fp16")}


@needs_tensorrt
@pytest.mark.tensorrt
@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_engine_matches_torch(engine_dirs, tiny_model_dir, precision):
    from tolerances import TOLERANCES

    engine = clippy_rt.load(engine_dirs[precision], backend="tensorrt", device="cuda")
    reference = clippy_rt.load(tiny_model_dir, backend="torch")
    tol = TOLERANCES[torch.float32 if precision == "fp32" else torch.float16]
    for batch, height, width in ((1, 32, 32), (3, 48, 64)):
        pixels = torch.randn(batch, 3, height, width)
        got, expected = engine.encode_image(pixels), reference.encode_image(pixels)
        torch.testing.assert_close(got.patch.cpu(), expected.patch, **tol)
        torch.testing.assert_close(got.pooled.cpu(), expected.pooled, **tol)
    prompts = [f"a photo of thing {i}" for i in range(50)]
    torch.testing.assert_close(engine.encode_text(prompts).cpu(), reference.encode_text(prompts), **tol)
    sidecar = json.loads((Path(engine_dirs[precision]) / SIDECAR_FILE).read_text())
    assert sidecar["precision"] == precision
    with pytest.raises(InputError, match="outside the engine's range"):
        engine.encode_image(torch.randn(5, 3, 32, 32))
