"""Kernel-test setup: Triton's interpreter on CPU, compiled kernels on CUDA.

Triton picks interpreter or compiled mode once, when ``triton.language`` is first
imported, from ``TRITON_INTERPRET``. This file sets it at import time, before any
kernel is launched: "1" (interpreter, CPU tensors) on machines without CUDA, "0"
(compiled) on CUDA machines. An explicit value in the environment wins, so
``TRITON_INTERPRET=1`` also runs the interpreter cases on a GPU machine.
"""

from __future__ import annotations

import os

import pytest
import torch

if "TRITON_INTERPRET" not in os.environ:
    os.environ["TRITON_INTERPRET"] = "0" if torch.cuda.is_available() else "1"

# Outputs stored in the input dtype (patch_pool, preprocess): one rounding of that dtype.
OUTPUT_TOLERANCES = {
    torch.float32: dict(atol=1e-5, rtol=1e-5),
    torch.float16: dict(atol=1e-3, rtol=1e-3),
    torch.bfloat16: dict(atol=8e-3, rtol=8e-3),
}

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


@pytest.fixture
def output_tol():
    """dtype -> assert_close keyword arguments for outputs stored in that dtype."""
    return OUTPUT_TOLERANCES


@pytest.fixture(params=DEVICES)
def kernel_device(request) -> str:
    """Where the Triton kernels run: "cpu" (interpreter) or "cuda" (compiled, gpu marker)."""
    device = request.param
    if device == "cuda":
        if not torch.cuda.is_available():
            pytest.skip("needs a CUDA GPU; none on this machine")
        return device
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("TRITON_INTERPRET is not 1: interpreter cases are off in this run "
                    "(the cuda cases test the compiled kernels)")
    try:
        import triton  # noqa: F401
        import triton.language.standard as standard
        from triton.runtime.interpreter import InterpretedFunction
    except ImportError as exc:
        pytest.skip(f"triton is not installed ({exc}); `pip install triton` to run the kernel cases")
    if not isinstance(standard.max, InterpretedFunction):
        pytest.fail("triton was imported in compiled mode before tests/kernels/conftest.py set "
                    "TRITON_INTERPRET=1; run with TRITON_INTERPRET=1 in the environment")
    return device
