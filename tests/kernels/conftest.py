"""Kernel-test setup: Triton's interpreter on CPU, compiled kernels on CUDA.

Triton picks interpreter or compiled mode once, when ``triton.language`` is first
imported, from ``TRITON_INTERPRET``. This file sets it at import time, before any
kernel is launched: "1" (interpreter, CPU tensors) on machines without CUDA, "0"
(compiled) on CUDA machines. An explicit value in the environment wins, so
``TRITON_INTERPRET=1`` also runs the interpreter cases on a GPU machine.

When the whole suite runs, a test module collected before this directory may already
have imported triton in compiled mode (torchvision, through timm, imports torch._dynamo,
which imports triton). The interpreter cases then run once in a child pytest process
started with TRITON_INTERPRET=1, and each case here reports that child's outcome
(a failure there fails it here).
"""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest
import torch

if "TRITON_INTERPRET" not in os.environ:
    os.environ["TRITON_INTERPRET"] = "0" if torch.cuda.is_available() else "1"

HERE = Path(__file__).resolve().parent

# Outputs stored in the input dtype (patch_pool, preprocess). float32: measured with the
# interpreter, preprocess within 6.0e-7 of its reference (values up to about 2.6) and
# patch_pool within 2.2e-8; on the GPU sweep's shapes (up to 60 taps per pixel) the
# kernel's float32 summation order, replayed with torch on CPU, is within 9.5e-7 of the
# reference; atol is about 3x that. float16 / bfloat16: kernel and
# reference may round a float32 value that sits near a rounding boundary to neighbouring
# values, one ulp apart: 2^-10 (float16) and 2^-7 (bfloat16) relative; bfloat16 measured
# 7.8e-3 (one ulp), float16 6.1e-5.
OUTPUT_TOLERANCES = {
    torch.float32: dict(atol=3e-6, rtol=0.0),
    torch.float16: dict(atol=1e-3, rtol=1e-3),
    torch.bfloat16: dict(atol=8e-3, rtol=8e-3),
}

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


@pytest.fixture(autouse=True)
def default_launch_configs(monkeypatch):
    """Kernels launch with their default config here, so a GPU run compiles one variant per
    shape class instead of timing every config of every test shape; the config-sweep tests
    pick each config explicitly, and test_tuning_* covers the tuner itself."""
    from clippy_rt.kernels import _triton_support

    monkeypatch.setattr(_triton_support, "TUNE_MIN_WORK", float("inf"))


@pytest.fixture
def output_tol():
    """dtype -> assert_close keyword arguments for outputs stored in that dtype."""
    return OUTPUT_TOLERANCES


def _triton_interpreting():
    """True / False: triton.language is in interpreter / compiled mode; None: no triton."""
    try:
        import triton.language.standard as standard
        from triton.runtime.interpreter import InterpretedFunction
    except ImportError:
        return None
    return isinstance(standard.max, InterpretedFunction)


@pytest.fixture(scope="session")
def interpreter_child_outcomes(tmp_path_factory):
    """{(module, test name): failure text or None} of the "cpu" cases, run in a child
    pytest with TRITON_INTERPRET=1 from its start."""
    report = tmp_path_factory.mktemp("interpreter") / "report.xml"
    env = dict(os.environ, TRITON_INTERPRET="1")
    command = [sys.executable, "-m", "pytest", str(HERE), "-q", "-p", "no:cacheprovider", "-m", "not gpu",
               "-k", "cpu", f"--junitxml={report}"]
    result = subprocess.run(command, cwd=HERE.parents[1], env=env, capture_output=True, text=True)
    if not report.exists():
        pytest.fail(f"the interpreter child run produced no report:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    outcomes = {}
    for case in ElementTree.parse(report).getroot().iter("testcase"):
        module = case.get("classname", "").rsplit(".", 1)[-1]
        problems = [child for child in case if child.tag in ("failure", "error")]
        outcomes[(module, case.get("name"))] = (
            "\n".join((p.get("message") or "") + "\n" + (p.text or "") for p in problems) if problems else None)
    return outcomes


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
    interpreting = _triton_interpreting()
    if interpreting is None:
        pytest.skip("triton is not installed; `pip install triton` to run the kernel cases")
    if interpreting:
        return device
    outcomes = request.getfixturevalue("interpreter_child_outcomes")
    key = (request.node.path.stem, request.node.name)
    if key not in outcomes:
        pytest.fail(f"{request.node.nodeid} did not run in the TRITON_INTERPRET=1 child process")
    if outcomes[key] is not None:
        pytest.fail(f"failed in the TRITON_INTERPRET=1 child process:\n{outcomes[key]}")
    pytest.skip("passed in a TRITON_INTERPRET=1 child process (triton was imported in compiled mode "
                "before tests/kernels/conftest.py ran)")
