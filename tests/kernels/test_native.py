"""The CUDA C++ seg head: loader errors, the C ABI's argument checks, and (on a GPU) results
against the torch reference."""

from __future__ import annotations

import ctypes
import importlib.util
import os
import shutil
import subprocess
from pathlib import Path
from typing import Optional

import pytest
import torch
import torch.nn.functional as F

from clippy_rt.errors import BackendUnavailableError, InputError
from clippy_rt.kernels.native import LIBRARY_NAME, _run_library, library_candidates, load_native, seg_head_native
from clippy_rt.kernels.seg_head_ref import patch_logits_ref, seg_head_ref, top2_gap, upsample_logits_ref

from test_seg_head import LABEL_GAP, SCORE_ATOL, SOFTMAX_RTOL  # noqa: E402  (tests/kernels is on sys.path)

REPO = Path(__file__).resolve().parents[2]
LETTERBOX = (0.125, 0.0, 0.875, 1.0)


def _cuda_architecture() -> str:
    """The running GPU's architecture for CMake ("90-real" on an H100 / H200); 80 without one."""
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        return f"{major}{minor}-real"
    return "80-real"


@pytest.fixture(scope="session")
def native_library(tmp_path_factory) -> Path:
    """An existing build of the library, or one built now with CMake for this machine's GPU
    architecture only (quick); skipped where there is neither a build nor cmake and nvcc."""
    for candidate in library_candidates():
        if candidate.is_file():
            return candidate
    if shutil.which("cmake") is None or shutil.which("nvcc") is None:
        pytest.skip(f"{LIBRARY_NAME} is not built and cmake/nvcc are missing to build it")
    build = tmp_path_factory.mktemp("native-build")
    for command in (["cmake", "-S", str(REPO), "-B", str(build), f"-DCMAKE_CUDA_ARCHITECTURES={_cuda_architecture()}"],
                    ["cmake", "--build", str(build), "--target", "clippy_rt_native", "-j2"]):
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            pytest.fail(f"{' '.join(command)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return build / LIBRARY_NAME


def _cuda_headers() -> Optional[Path]:
    """A directory holding cuda_fp16.h / cuda_bf16.h: the CUDA toolkit's, or Triton's copy."""
    places = []
    if os.environ.get("CUDA_HOME"):
        places.append(Path(os.environ["CUDA_HOME"]) / "include")
    if shutil.which("nvcc"):
        places.append(Path(shutil.which("nvcc")).resolve().parents[1] / "include")
    places.append(Path("/usr/local/cuda/include"))
    spec = importlib.util.find_spec("triton")
    if spec is not None and spec.origin:
        places.append(Path(spec.origin).parent / "backends" / "nvidia" / "include")
    return next((p for p in places if (p / "cuda_fp16.h").is_file() and (p / "cuda_bf16.h").is_file()), None)


@pytest.fixture(scope="session")
def emulated_library(tmp_path_factory) -> Path:
    """kernels/csrc/seg_head.cu built as plain C++ with -DCLIPPY_RT_HOST_EMULATION: the same
    kernels and entry point, run block by block on the CPU (host_emulation.h)."""
    compiler = shutil.which("g++") or shutil.which("clang++")
    headers = _cuda_headers()
    if compiler is None or headers is None:
        pytest.skip("needs g++ (or clang++) and the CUDA half-precision headers to emulate the CUDA kernels")
    path = tmp_path_factory.mktemp("native-emulated") / LIBRARY_NAME
    command = [compiler, "-std=c++20", "-O1", "-ffp-contract=off", "-Wall", "-Wno-unknown-pragmas", "-x", "c++",
               "-DCLIPPY_RT_HOST_EMULATION", f"-I{headers}", "-fPIC", "-shared", "-pthread",
               str(REPO / "kernels" / "csrc" / "seg_head.cu"), "-o", str(path)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        pytest.fail(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return path


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


@pytest.mark.parametrize("which", ["native_library", "emulated_library"])
def test_c_abi_rejects_invalid_arguments(request, which):
    """The C entry point checks its arguments before touching the GPU."""
    library = load_native(request.getfixturevalue(which))
    logits_bytes = 2 * 14 * 14 * 21 * 4
    # Each part rounded up to 256 bytes: logits, row taps (index and weight, 448 x 4 bytes
    # each), column taps (the same) and 15 int32 row starts.
    assert library.clippy_seg_head_workspace_bytes(2, 14, 14, 21, 448, 448) == \
        -(-logits_bytes // 256) * 256 + 4 * 448 * 4 + 256
    dummy = ctypes.c_float(0.0)
    address = ctypes.addressof(dummy)

    def call(labels_bytes=1, prompts=3, window=None, temperature=0.0, patch_dtype=0, workspace=1 << 20):
        return library.clippy_seg_head(address, labels_bytes, None, address, patch_dtype, address, 0,
                                       1, 2, 2, 4, prompts, 4, 4, window, temperature, address, workspace, None)

    assert call(labels_bytes=1, prompts=300) == 1
    assert b"255" in library.clippy_last_error()
    assert call(labels_bytes=2) == 1
    assert call(window=(ctypes.c_double * 4)(0.5, 0.0, 0.5, 1.0)) == 1
    assert b"window" in library.clippy_last_error()
    assert call(temperature=-1.0) == 1
    assert call(patch_dtype=7) == 1
    assert call(workspace=16) == 2
    assert b"needs" in library.clippy_last_error()


# (batch, h, w, D, K, out_size, dtype, window, temperature): 16x and non-integer upsampling,
# bands longer than one pass of 32 rows (a 1 x 2 grid to 75 rows), downsampling (source rows
# with no output row), K below / above / not a multiple of the 32-prompt chunk, int32
# labels, letterbox windows, softmax scores, every input dtype.
EMULATED_CASES = [
    (2, 3, 4, 40, 21, (48, 64), torch.float32, None, None),
    (1, 1, 2, 16, 5, (75, 9), torch.float32, None, 30.0),
    (1, 9, 7, 24, 33, (5, 4), torch.float32, None, None),
    (2, 7, 6, 40, 70, (61, 47), torch.float16, LETTERBOX, None),
    (2, 3, 3, 16, 300, (23, 17), torch.bfloat16, (0.2, 0.3, 0.7, 0.65), 100.0),
    (1, 5, 3, 20, 1, (13, 40), torch.float32, None, None),
]


def assert_matches_reference(labels, scores, patch, text, out_size, window, temperature):
    """Labels equal seg_head_ref's wherever the reference's top-2 gap exceeds LABEL_GAP (at
    least 90 % of pixels), scores within the measured tolerances."""
    ref_labels, ref_scores = seg_head_ref(patch, text, out_size, window=window, return_scores=True,
                                          temperature=temperature)
    assert labels.dtype == ref_labels.dtype
    decided = top2_gap(upsample_logits_ref(patch_logits_ref(patch, text), out_size, window)) > LABEL_GAP
    assert decided.float().mean().item() > 0.9
    torch.testing.assert_close(labels[decided], ref_labels[decided], rtol=0, atol=0)
    if temperature is None:
        torch.testing.assert_close(scores, ref_scores, rtol=0, atol=SCORE_ATOL)
    else:
        torch.testing.assert_close(scores, ref_scores, rtol=SOFTMAX_RTOL, atol=1e-7)


@pytest.mark.parametrize("batch, h, w, dim, prompts, out_size, dtype, window, temperature", EMULATED_CASES)
def test_emulated_kernels_match_reference(emulated_library, batch, h, w, dim, prompts, out_size, dtype, window,
                                          temperature):
    """The CUDA kernels' logic, run on the CPU through host emulation, against seg_head_ref."""
    library = load_native(emulated_library)
    generator = torch.Generator().manual_seed(prompts)
    patch = F.normalize(torch.randn(batch, h, w, dim, generator=generator), dim=-1).to(dtype)
    text = F.normalize(torch.randn(prompts, dim, generator=generator), dim=-1).to(dtype)
    labels, scores = _run_library(library, patch, text, out_size, window, True, temperature, None)
    assert_matches_reference(labels, scores, patch, text, out_size, window, temperature)
    labels_only, no_scores = _run_library(library, patch, text, out_size, window, False, temperature, None)
    assert no_scores is None and torch.equal(labels_only, labels)


@pytest.mark.parametrize("patch_dtype, text_dtype", [(torch.float16, torch.float32), (torch.bfloat16, torch.float16)])
def test_emulated_mixed_dtypes(emulated_library, patch_dtype, text_dtype):
    """Mixed operand dtypes take the float32 SIMT matmul (one dtype of half operands takes
    the tensor-core kernel, covered above); both against the reference, D = 80 (a partial
    16-channel step) and 70 prompts (a partial 64-prompt tile)."""
    library = load_native(emulated_library)
    generator = torch.Generator().manual_seed(2)
    patch = F.normalize(torch.randn(1, 9, 8, 80, generator=generator), dim=-1).to(patch_dtype)
    text = F.normalize(torch.randn(70, 80, generator=generator), dim=-1).to(text_dtype)
    labels, scores = _run_library(library, patch, text, (31, 29), None, True, None, None)
    ref_labels, ref_scores = seg_head_ref(patch, text, (31, 29), return_scores=True)
    decided = top2_gap(upsample_logits_ref(patch_logits_ref(patch, text), (31, 29))) > LABEL_GAP
    torch.testing.assert_close(labels[decided], ref_labels[decided], rtol=0, atol=0)
    torch.testing.assert_close(scores, ref_scores, rtol=0, atol=SCORE_ATOL)


def test_emulated_ties_go_to_lowest_index(emulated_library):
    """Duplicated prompts give identical logits: the lower index wins, within one 32-prompt
    chunk (5 and 9) and across chunks (3 and 35)."""
    library = load_native(emulated_library)
    generator = torch.Generator().manual_seed(1)
    patch = F.normalize(torch.randn(1, 6, 6, 32, generator=generator), dim=-1)
    text = F.normalize(torch.randn(40, 32, generator=generator), dim=-1)
    text[9] = text[5]
    text[35] = text[3]
    patch[0, :3, :3] = text[3]
    patch[0, 3:, 3:] = text[5]
    labels, _ = _run_library(library, patch, text, (17, 15), None, False, None, None)
    assert (labels == 3).any() and (labels == 5).any()
    assert not ((labels == 9) | (labels == 35)).any()


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
    assert_matches_reference(labels, scores, patch, text, out_size, window, temperature)


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
    assert seg_head_module.seg_head(patch, text, (4, 4), impl="native")[0] == "native-labels"
    assert calls[-1]["window"] is None and calls[-1]["return_scores"] is False
    # CPU tensors: "auto" never tries the library.
    labels, _ = seg_head_module.seg_head(patch, text, (4, 4))
    assert isinstance(labels, torch.Tensor) and len(calls) == 1

    class FakeCuda(torch.Tensor):
        is_cuda = True

    monkeypatch.setattr(native_module, "native_available", lambda path=None: True)
    monkeypatch.setattr(seg_head_module, "resolve_impl", lambda *args: "torch")
    seg_head_module.seg_head(patch.as_subclass(FakeCuda), text.as_subclass(FakeCuda), (4, 4), window=(0, 0, 1, 1))
    assert len(calls) == 2 and calls[-1]["window"] == (0, 0, 1, 1)
    monkeypatch.setattr(native_module, "native_available", lambda path=None: False)
    labels, _ = seg_head_module.seg_head(patch.as_subclass(FakeCuda), text.as_subclass(FakeCuda), (4, 4))
    assert len(calls) == 2 and labels.shape == (1, 4, 4)
