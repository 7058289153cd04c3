"""The CUDA C++ seg head: loader errors, the C ABI's argument checks, and (on a GPU) results
against the torch reference."""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from clippy_rt.errors import BackendUnavailableError, InputError
from clippy_rt.kernels.native import LIBRARY_NAME, library_candidates, load_native, seg_head_native
from clippy_rt.kernels.seg_head import patch_logits_ref, seg_head_ref, top2_gap, upsample_logits_ref

REPO = Path(__file__).resolve().parents[2]
LETTERBOX = (0.125, 0.0, 0.875, 1.0)


@pytest.fixture(scope="session")
def native_library(tmp_path_factory) -> Path:
    """An existing build of the library, or one built now with CMake (one architecture, to
    keep it quick); skipped where there is neither a build nor cmake and nvcc."""
    for candidate in library_candidates():
        if candidate.is_file():
            return candidate
    if shutil.which("cmake") is None or shutil.which("nvcc") is None:
        pytest.skip(f"{LIBRARY_NAME} is not built and cmake/nvcc are missing to build it")
    build = tmp_path_factory.mktemp("native-build")
    for command in (["cmake", "-S", str(REPO), "-B", str(build), "-DCMAKE_CUDA_ARCHITECTURES=80-real"],
                    ["cmake", "--build", str(build), "--target", "clippy_rt_native", "-j2"]):
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            pytest.fail(f"{' '.join(command)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return build / LIBRARY_NAME


def test_missing_library_says_how_to_build(tmp_path):
    with pytest.raises(BackendUnavailableError, match="cmake -S . -B build"):
        load_native(tmp_path / LIBRARY_NAME)


def test_broken_library_file_is_reported(tmp_path):
    path = tmp_path / LIBRARY_NAME
    path.write_bytes(b"not an ELF file")
    with pytest.raises(BackendUnavailableError, match="does not load"):
        load_native(path)


def test_inputs_validated_before_anything_else():
    with pytest.raises(InputError, match=r"\[B, h, w, D\]"):
        seg_head_native(torch.zeros(2, 3, 4), torch.zeros(3, 4), (5, 5))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without CUDA")
def test_without_cuda_says_so():
    with pytest.raises(BackendUnavailableError, match="CUDA"):
        seg_head_native(torch.zeros(1, 2, 2, 4), torch.zeros(3, 4), (5, 5))


def test_c_abi_rejects_invalid_arguments(native_library):
    """The C entry point checks its arguments before touching the GPU."""
    library = load_native(native_library)
    assert library.clippy_seg_head_workspace_bytes(2, 14, 14, 21) == 2 * 14 * 14 * 21 * 4
    dummy = ctypes.c_float(0.0)
    address = ctypes.addressof(dummy)

    def call(labels_bytes=1, prompts=3, window=None, temperature=0.0, patch_dtype=0):
        return library.clippy_seg_head(address, labels_bytes, None, address, patch_dtype, address, 0,
                                       1, 2, 2, 4, prompts, 4, 4, window, temperature, address, 1 << 20, None)

    assert call(labels_bytes=1, prompts=300) == 1
    assert b"255" in library.clippy_last_error()
    assert call(labels_bytes=2) == 1
    assert call(window=(ctypes.c_float * 4)(0.5, 0.0, 0.5, 1.0)) == 1
    assert b"window" in library.clippy_last_error()
    assert call(temperature=-1.0) == 1
    assert call(patch_dtype=7) == 1


@pytest.mark.gpu
@pytest.mark.parametrize("dtype, prompts, window, temperature", [
    (torch.float32, 21, None, None),
    (torch.float16, 150, LETTERBOX, None),
    (torch.bfloat16, 21, (0.0, 0.2, 1.0, 0.8), 100.0),
    (torch.float32, 1000, None, None),
])
def test_native_matches_reference_gpu(native_library, dtype, prompts, window, temperature):
    generator = torch.Generator().manual_seed(0)
    patch = F.normalize(torch.randn(2, 14, 11, 768, generator=generator), dim=-1).to("cuda", dtype)
    text = F.normalize(torch.randn(prompts, 768, generator=generator), dim=-1).to("cuda", dtype)
    out_size = (227, 181)
    labels, scores = seg_head_native(patch, text, out_size, window=window, return_scores=True,
                                     temperature=temperature, library_path=native_library)
    ref_labels, ref_scores = seg_head_ref(patch, text, out_size, window=window, return_scores=True,
                                          temperature=temperature)
    assert labels.dtype == ref_labels.dtype
    decided = top2_gap(upsample_logits_ref(patch_logits_ref(patch, text), out_size, window)) > 1e-5
    assert decided.float().mean().item() > 0.9
    torch.testing.assert_close(labels[decided], ref_labels[decided], rtol=0, atol=0)
    if temperature is None:
        torch.testing.assert_close(scores, ref_scores, rtol=0, atol=1e-5)
    else:
        torch.testing.assert_close(scores, ref_scores, rtol=1e-4, atol=1e-6)


def test_seg_head_dispatches_native_and_auto_prefers_it_over_torch_on_cuda(monkeypatch):
    # On CUDA without Triton, "auto" must reach the CUDA C++ library; "native" always does.
    import clippy_rt.kernels.native as native_module
    import clippy_rt.kernels.seg_head as seg_head_module

    calls = []

    def fake_native(patch, text, out_size, **kwargs):
        calls.append(kwargs)
        return "native-labels", None

    monkeypatch.setattr(native_module, "seg_head_native", fake_native)
    patch, text = torch.randn(1, 2, 2, 4), torch.randn(3, 4)
    assert seg_head_module.seg_head(patch, text, (4, 4), backend="native")[0] == "native-labels"
    assert calls[-1]["window"] is None and calls[-1]["return_scores"] is False
    # CPU tensors: "auto" never tries the library.
    labels, _ = seg_head_module.seg_head(patch, text, (4, 4))
    assert isinstance(labels, torch.Tensor) and len(calls) == 1

    class FakeCuda(torch.Tensor):
        is_cuda = True

    monkeypatch.setattr(native_module, "native_available", lambda path=None: True)
    monkeypatch.setattr(seg_head_module, "resolve_backend", lambda *args: "torch")
    seg_head_module.seg_head(patch.as_subclass(FakeCuda), text.as_subclass(FakeCuda), (4, 4), window=(0, 0, 1, 1))
    assert len(calls) == 2 and calls[-1]["window"] == (0, 0, 1, 1)
    monkeypatch.setattr(native_module, "native_available", lambda path=None: False)
    labels, _ = seg_head_module.seg_head(patch.as_subclass(FakeCuda), text.as_subclass(FakeCuda), (4, 4))
    assert len(calls) == 2 and labels.shape == (1, 4, 4)
