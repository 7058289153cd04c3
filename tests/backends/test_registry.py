"""The backend registry (``clippy_rt.backends``): one record per backend, and what the
engine, the stream and the loaders take from it."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch

import clippy_rt
from clippy_rt.backends import BACKENDS, REGISTRY, backend_for_kind, backend_record, is_reference
from clippy_rt.errors import InputError, ModelDirError
from clippy_rt.formats.identity import artifact_identity
from clippy_rt.formats.kinds import ENGINE, KINDS, MODEL, ONNX


def test_one_backend_per_artifact_kind_and_loaders_exist():
    assert sorted(record.artifact_kind for record in REGISTRY.values()) == sorted(KINDS)
    for record in REGISTRY.values():
        assert backend_for_kind(record.artifact_kind) is record
        assert set(record.made_from) <= set(KINDS) - {record.artifact_kind}
        if record.name != "tensorrt":  # the TensorRT module imports without TensorRT; checked below
            assert callable(getattr(importlib.import_module(record.module), record.loader))
    assert callable(getattr(importlib.import_module(REGISTRY["tensorrt"].module), REGISTRY["tensorrt"].loader))


@pytest.mark.parametrize("name", [None, 3, "Torch", "tflite", ""])
def test_unknown_backend_names_the_choices(name):
    with pytest.raises(InputError, match="unknown backend .*choose one of torch, onnxruntime, tensorrt"):
        backend_record(name)


def test_reference_is_torch_fp32_only():
    assert is_reference("torch", "fp32")
    assert not any(is_reference(b, p) for b in BACKENDS for p in ("fp16", "bf16", "int8"))
    assert not any(is_reference(b, "fp32") for b in BACKENDS if b != "torch")


def test_pixel_dtype_follows_where_the_towers_run():
    torch_record, ort, trt = REGISTRY["torch"], REGISTRY["onnxruntime"], REGISTRY["tensorrt"]
    assert [torch_record.pixel_dtype(p) for p in ("fp32", "fp16", "bf16")] == [torch.float32, torch.float16,
                                                                               torch.bfloat16]
    # Exported graphs take float32 inputs in every precision.
    assert {record.pixel_dtype(p) for record in (ort, trt) for p in ("fp32", "fp16", "int8")} == {torch.float32}
    assert torch_record.cuda_graphs and not ort.cuda_graphs and not trt.cuda_graphs


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
        clippy_rt.load(tiny_onnx_dir)
    (tmp_path / "engine.json").write_text("{}")
    assert backend_for_kind(ENGINE).name == "tensorrt"
    with pytest.raises(ModelDirError, match="is a TensorRT engine directory; load it with backend='tensorrt'"):
        clippy_rt.load(tmp_path)
