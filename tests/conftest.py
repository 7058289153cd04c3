"""Shared fixtures: tiny random models, tolerance table, GPU/TensorRT markers."""

from __future__ import annotations

import os
import signal
from pathlib import Path

# Triton fixes interpreter or compiled mode at its first import (which torch._dynamo,
# pulled in by the timm reference, may trigger): without a GPU, the Triton kernels
# can only run in the interpreter, so choose that before anything imports Triton.
if "TRITON_INTERPRET" not in os.environ:
    import importlib.util

    _cuda = importlib.util.find_spec("torch") is not None and __import__("torch").cuda.is_available()
    os.environ["TRITON_INTERPRET"] = "0" if _cuda else "1"

import pytest
import torch

# A suite started in the background (`nohup ... &`, a CI runner without job control)
# inherits SIGINT ignored, and so would every command the tests start: the interrupt tests
# would then see Ctrl-C do nothing. Python's own handler is reset to the default in each
# child, so the commands under test get SIGINT as a terminal would deliver it.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_addoption(parser):
    parser.addoption("--soak", action="store_true", help="run the long soak tests (minutes each)")


def pytest_collection_modifyitems(config, items):
    has_cuda = torch.cuda.is_available()
    soak = config.getoption("--soak")
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU; none on this machine"))
        if "soak" in item.keywords and not soak:
            item.add_marker(pytest.mark.skip(reason="long soak: run with pytest --soak"))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A `tiny` random-weight model directory, made once per session."""
    from clippy_rt.formats.random_init import random_init

    out = tmp_path_factory.mktemp("models") / "tiny"
    random_init("tiny", out, seed=0)
    return out


@pytest.fixture(scope="session")
def tiny_onnx_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny model exported with float16 graphs (parity checked at 32x32, batches 1 and 2)."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from clippy_rt.export.onnx import export_onnx

    out = tmp_path_factory.mktemp("onnx") / "tiny-onnx"
    export_onnx(tiny_model_dir, out, fp16=True, check_sizes=[32, (32, 48)], check_batches=[1, 2],
                seg_head=False)
    return out
