"""The backend registry (``clippy_rt.backends``): one record per backend, and what the
engine, the stream and the loaders take from it."""

from __future__ import annotations

import importlib
import importlib.util

import numpy as np
import pytest
import torch

import clippy_rt
from clippy_rt.backends import BACKENDS, REGISTRY, backend_for_kind, backend_record, backends_for_kind, is_reference
from clippy_rt.errors import InputError, ModelDirError
from clippy_rt.formats.identity import artifact_identity
from clippy_rt.formats.kinds import ENGINE, KINDS, MODEL, ONNX
from clippy_rt.precisions import PRECISIONS


def test_one_default_backend_per_artifact_kind_and_loaders_exist():
    # Every kind has exactly one default backend; ONNX directories are also served by OpenVINO.
    defaults = [record for record in REGISTRY.values() if record.kind_default]
    assert sorted(record.artifact_kind for record in defaults) == sorted(KINDS)
    for record in REGISTRY.values():
        assert record in backends_for_kind(record.artifact_kind)
        assert backends_for_kind(record.artifact_kind)[0] is backend_for_kind(record.artifact_kind)
        assert backend_for_kind(record.artifact_kind).kind_default
        assert set(record.made_from) <= set(KINDS) - {record.artifact_kind}
        assert record.precisions and set(record.precisions) <= set(PRECISIONS)
    assert [r.name for r in backends_for_kind(ONNX)] == ["onnxruntime", "openvino"]
    assert backend_for_kind(ONNX).name == "onnxruntime" and backend_for_kind(MODEL).name == "torch"
    for name in ("torch", "onnxruntime", "tensorrt"):  # TensorRT's module imports without TensorRT
        assert callable(getattr(importlib.import_module(REGISTRY[name].module), REGISTRY[name].loader))
    if importlib.util.find_spec("openvino"):
        assert callable(getattr(importlib.import_module(REGISTRY["openvino"].module), REGISTRY["openvino"].loader))


@pytest.mark.parametrize("name", [None, 3, "Torch", "tflite", ""])
def test_unknown_backend_names_the_choices(name):
    with pytest.raises(InputError, match="unknown backend .*choose one of torch, onnxruntime, tensorrt, openvino$"):
        backend_record(name)


def test_reference_is_torch_fp32_only():
    assert is_reference("torch", "fp32")
    assert not any(is_reference(b, p) for b in BACKENDS for p in ("fp16", "bf16", "int8"))
    assert not any(is_reference(b, "fp32") for b in BACKENDS if b != "torch")


def test_pixel_dtype_follows_where_the_towers_run():
    torch_record, ort, trt, ov = (REGISTRY[name] for name in ("torch", "onnxruntime", "tensorrt", "openvino"))
    assert [torch_record.pixel_dtype(p) for p in ("fp32", "fp16", "bf16")] == [torch.float32, torch.float16,
                                                                               torch.bfloat16]
    # Exported graphs take float32 inputs in every precision.
    assert {record.pixel_dtype(p) for record in (ort, trt, ov) for p in ("fp32", "fp16", "bf16", "int8")} == \
        {torch.float32}
    assert torch_record.cuda_graphs and not ort.cuda_graphs and not trt.cuda_graphs and not ov.cuda_graphs


def test_engines_carry_their_record(tiny_model_dir, tiny_onnx_dir):
    half = clippy_rt.load(tiny_model_dir, precision="bf16")
    ort = clippy_rt.load(tiny_onnx_dir, backend="onnxruntime")
    assert (half.backend, half.pixel_dtype, half.cuda_graphs) == ("torch", torch.bfloat16, True)
    assert (ort.backend, ort.pixel_dtype, ort.cuda_graphs) == ("onnxruntime", torch.float32, False)
    assert ort.model is None and half.model is not None
    # The identity is the artifact's: the model directory's and the ONNX directory's differ.
    assert half.identity() == artifact_identity(tiny_model_dir, MODEL)
    assert ort.identity() == artifact_identity(tiny_onnx_dir, ONNX)
    assert half.identity() != ort.identity()
    # Device pre-processing writes pixels in the dtype the tower reads.
    frame = np.zeros((32, 32, 3), np.uint8)
    assert half.prepare(frame, preprocess="device").pixels.dtype == torch.bfloat16
    assert ort.prepare(frame, preprocess="device").pixels.dtype == torch.float32


def test_a_loader_names_the_backend_of_another_kind(tiny_onnx_dir, tmp_path):
    with pytest.raises(ModelDirError, match="is an ONNX directory; load it with backend='onnxruntime'"):
        clippy_rt.load(tiny_onnx_dir, backend="torch")
    (tmp_path / "engine.json").write_text("{}")
    assert backend_for_kind(ENGINE).name == "tensorrt"
    with pytest.raises(ModelDirError, match="is a TensorRT engine directory; load it with backend='tensorrt'"):
        clippy_rt.load(tmp_path, backend="torch")
