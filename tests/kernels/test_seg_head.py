"""Segmentation head: the torch reference against independent torch formulations, and the
Triton kernels (interpreter on CPU, compiled on CUDA) against the reference."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clippy_rt.errors import BackendUnavailableError, InputError
from clippy_rt.kernels.seg_head import seg_head
from clippy_rt.kernels.seg_head_ref import (patch_logits_ref, seg_head_ref, seg_head_reference_procedure, top2_gap,
                                            upsample_logits_ref)

# Seg-head arithmetic is float32 whatever the input dtype, so kernel and reference differ
# only by float32 summation order and FMA contraction. Measured with the interpreter over
# KERNEL_CASES (D up to 768, K up to 1000): scores within 3.0e-7 of the reference; the CUDA
# kernels run through host emulation: within 4.8e-7. SCORE_ATOL is about 4x the larger.
# Labels must agree wherever the reference's top-2 gap exceeds the error two logits can
# have between them (LABEL_GAP).
SCORE_ATOL = 2e-6
LABEL_GAP = 2 * SCORE_ATOL
# Softmax scores: temperature (up to 100 here) multiplies a logit error inside exp(), so
# relative errors reach temperature x SCORE_ATOL = 2e-4 in principle; measured 3.7e-7 on CPU.
SOFTMAX_RTOL = 2e-4

# The package exports the function `seg_head`, which shadows the submodule attribute.
seg_head_module = importlib.import_module("clippy_rt.kernels.seg_head")

LETTERBOX = (0.125, 0.0, 0.875, 1.0)


def make_inputs(batch, h, w, dim, prompts, dtype=torch.float32, device="cpu", seed=0):
    generator = torch.Generator().manual_seed(seed)
    patch = F.normalize(torch.randn(batch, h, w, dim, generator=generator), dim=-1)
    text = F.normalize(torch.randn(prompts, dim, generator=generator), dim=-1)
    return patch.to(device=device, dtype=dtype), text.to(device=device, dtype=dtype)


def full_logits(patch, text, out_size, window=None):
    """[B, K, H, W] float32 logits from the reference's own building blocks."""
    return upsample_logits_ref(patch_logits_ref(patch, text), out_size, window)


@pytest.fixture
def interpreter_bf16_dot(monkeypatch):
    """Triton's interpreter stores bfloat16 as uint16 (numpy has no bfloat16) and its tl.dot
    multiplies those bit patterns; a GPU multiplies the values exactly and accumulates in
    float32. Patch the interpreter's dot to do the same, so the bfloat16 tl.dot branch can
    run on CPU. No-op where Triton is compiled or not installed."""
    try:
        import triton.language as tl
        from triton.runtime import interpreter
    except ImportError:
        return
    original = interpreter.InterpreterBuilder.create_dot

    def as_float32(handle):
        if handle.dtype.scalar != tl.bfloat16:
            return handle
        data = interpreter._convert_float(handle.data, tl.bfloat16, tl.float32, None).view(np.float32)
        return interpreter.TensorHandle(data, tl.float32)

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        return original(self, as_float32(a), as_float32(b), d, input_precision, max_num_imprecise_acc)

    monkeypatch.setattr(interpreter.InterpreterBuilder, "create_dot", create_dot)


def assert_same_decisions(labels, scores, ref_labels, ref_scores, gap):
    """Labels equal wherever the top-2 gap is outside rounding; scores within float32 rounding."""
    assert labels.dtype == ref_labels.dtype and labels.shape == ref_labels.shape
    decided = gap.to(labels.device) > LABEL_GAP
    # Random unit vectors leave near-ties at a small fraction of pixels only.
    assert decided.float().mean().item() > 0.9
    torch.testing.assert_close(labels[decided], ref_labels.to(labels.device)[decided], rtol=0, atol=0)
    if ref_scores is not None:
        torch.testing.assert_close(scores, ref_scores.to(scores.device), rtol=0, atol=SCORE_ATOL)


# ----------------------------------------------------------------------------------------------
# The reference
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("h, w, out_size", [(1, 1, (5, 3)), (7, 7, (30, 25)), (14, 9, (224, 100)),
                                            (37, 28, (41, 29))])
def test_ref_equals_interpolate_of_einsum(h, w, out_size):
    patch, text = make_inputs(2, h, w, 24, 21)
    labels, scores = seg_head_ref(patch, text, out_size, return_scores=True)
    logits = F.interpolate(torch.einsum("bhwd,kd->bkhw", patch, text), size=out_size, mode="bilinear",
                           align_corners=False)
    # Exact for the same layout; the reference's channels-last logits take another
    # F.interpolate code path that may round the last bit differently.
    exact = F.interpolate(patch_logits_ref(patch, text), size=out_size, mode="bilinear", align_corners=False)
    torch.testing.assert_close(scores, exact.amax(dim=1), rtol=0, atol=0)
    torch.testing.assert_close(patch_logits_ref(patch, text), torch.einsum("bhwd,kd->bkhw", patch, text))
    assert_same_decisions(labels, scores, logits.argmax(dim=1).to(torch.uint8), logits.amax(dim=1),
                          top2_gap(logits))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("h, w, out_size", [(1, 1, (4, 7)), (7, 14, (33, 50)), (14, 14, (224, 224)),
                                            (28, 37, (45, 61))])
def test_ref_matches_reference_procedure(h, w, out_size, dtype):
    patch, text = make_inputs(1, h, w, 64, 21, dtype)
    labels, scores = seg_head_ref(patch, text, out_size, return_scores=True)
    ref_labels, ref_logits = seg_head_reference_procedure(patch, text, out_size)
    assert ref_labels.dtype == torch.int64 and ref_logits.shape == (1, 21, *out_size)
    assert_same_decisions(labels.long(), scores, ref_labels, ref_logits.amax(dim=1), top2_gap(ref_logits))


def test_ref_full_window_equals_none():
    patch, text = make_inputs(1, 7, 9, 16, 5)
    for window in [(0, 0, 1, 1), (0.0, 0.0, 1.0, 1.0)]:
        with_window = seg_head_ref(patch, text, (31, 40), window=window, return_scores=True)
        without = seg_head_ref(patch, text, (31, 40), return_scores=True)
        torch.testing.assert_close(with_window, without, rtol=0, atol=0)


@pytest.mark.parametrize("window", [LETTERBOX, (0.0, 0.2, 1.0, 0.8), (0.3, 0.1, 0.55, 0.9), (0.0, 0.0, 1.0, 0.999)])
def test_ref_window_matches_grid_sample(window):
    """The window gather equals grid_sample(padding_mode="border", align_corners=False) at the
    normalised sample positions v = y0 + (y + 0.5) / H * (y1 - y0)."""
    patch, text = make_inputs(2, 7, 11, 16, 6)
    out_size = (23, 31)
    y0, x0, y1, x1 = window
    ys = y0 + (torch.arange(out_size[0], dtype=torch.float64) + 0.5) / out_size[0] * (y1 - y0)
    xs = x0 + (torch.arange(out_size[1], dtype=torch.float64) + 0.5) / out_size[1] * (x1 - x0)
    grid = torch.stack(torch.meshgrid(2 * xs - 1, 2 * ys - 1, indexing="xy"), dim=-1).float()
    logits = patch_logits_ref(patch, text)
    expected = F.grid_sample(logits, grid.expand(2, -1, -1, -1), mode="bilinear", padding_mode="border",
                             align_corners=False)
    torch.testing.assert_close(full_logits(patch, text, out_size, window), expected, rtol=0, atol=SCORE_ATOL)
    labels, scores = seg_head_ref(patch, text, out_size, window=window, return_scores=True)
    assert_same_decisions(labels.long(), scores, expected.argmax(dim=1), expected.amax(dim=1),
                          top2_gap(expected))


def test_ref_chunked_equals_whole(monkeypatch):
    patch, text = make_inputs(2, 5, 6, 16, 40)
    text[29] = text[3]  # a tie that crosses a chunk boundary
    whole = seg_head_ref(patch, text, (13, 17), return_scores=True, temperature=30.0)
    monkeypatch.setattr(importlib.import_module("clippy_rt.kernels.seg_head_ref"), "_REF_CHUNK_ELEMENTS",
                        2 * 13 * 17 * 7)  # chunks of 7 prompts
    chunked = seg_head_ref(patch, text, (13, 17), return_scores=True, temperature=30.0)
    torch.testing.assert_close(chunked[0], whole[0], rtol=0, atol=0)
    torch.testing.assert_close(chunked[1], whole[1], rtol=1e-6, atol=0)
    assert not (chunked[0] == 29).any()


@pytest.mark.parametrize("temperature", [1.0, 100.0])
def test_ref_softmax_scores(temperature):
    patch, text = make_inputs(1, 7, 7, 32, 21)
    labels, scores = seg_head_ref(patch, text, (20, 22), return_scores=True, temperature=temperature)
    probs = torch.softmax(temperature * full_logits(patch, text, (20, 22)), dim=1)
    torch.testing.assert_close(scores, probs.gather(1, labels.long()[:, None]).squeeze(1), rtol=1e-5, atol=1e-7)


def test_ref_label_dtype_and_no_scores():
    patch, text = make_inputs(1, 3, 3, 8, 255)
    labels, scores = seg_head_ref(patch, text, (4, 4))
    assert labels.dtype == torch.uint8 and scores is None
    patch, text = make_inputs(1, 3, 3, 8, 256)
    labels, _ = seg_head_ref(patch, text, (4, 4))
    assert labels.dtype == torch.int32
    assert labels.max().item() < 256


def test_dispatch_on_cpu_uses_reference():
    patch, text = make_inputs(1, 7, 7, 16, 21)
    expected = seg_head_ref(patch, text, (19, 23), window=LETTERBOX, return_scores=True)
    for impl in ("auto", "torch"):
        got = seg_head(patch, text, (19, 23), window=LETTERBOX, return_scores=True, impl=impl)
        torch.testing.assert_close(got, expected, rtol=0, atol=0)


NO_TRITON_SCRIPT = """
import sys
sys.modules["triton"] = None  # `import triton` now raises ImportError
import torch
import clippy_rt.kernels.patch_pool as patch_pool
import clippy_rt.kernels.seg_head as seg_head
from clippy_rt.errors import BackendUnavailableError
patch, text = torch.randn(1, 3, 3, 8), torch.randn(4, 8)
labels, _ = seg_head.seg_head(patch, text, (5, 5))
assert labels.shape == (1, 5, 5)
patch_pool.patch_pool(torch.randn(1, 5, 8))
try:
    seg_head.seg_head(patch, text, (5, 5), impl="triton")
except BackendUnavailableError as exc:
    assert "pip install triton" in str(exc), exc
else:
    raise SystemExit("impl='triton' without triton did not raise")
"""


def test_works_without_triton():
    """The package imports and falls back without Triton; forcing it says how to install it."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    result = subprocess.run([sys.executable, "-c", NO_TRITON_SCRIPT], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]


# ----------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------

def test_triton_on_cpu_without_interpreter_says_how(monkeypatch):
    patch, text = make_inputs(1, 2, 2, 8, 3)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(BackendUnavailableError, match="TRITON_INTERPRET=1"):
        seg_head(patch, text, (4, 4), impl="triton")


@pytest.mark.parametrize("call, error, message", [
    (lambda p, t: seg_head(p[0], t, (4, 4)), InputError, r"\[B, h, w, D\]"),
    (lambda p, t: seg_head(p, t[0], (4, 4)), InputError, r"\[K, D\]"),
    (lambda p, t: seg_head(p.double(), t, (4, 4)), TypeError, "float64"),
    (lambda p, t: seg_head(p, t.int(), (4, 4)), TypeError, "int32"),
    (lambda p, t: seg_head(p, t[:, :4], (4, 4)), InputError, "width 4 does not match .* D = 8"),
    (lambda p, t: seg_head(p, t[:0], (4, 4)), InputError, "K = 0"),
    (lambda p, t: seg_head(p, t, (4, 0)), InputError, "positive integers"),
    (lambda p, t: seg_head(p, t, (4.0, 4)), InputError, "positive integers"),
    (lambda p, t: seg_head(p, t, 4), InputError, r"\(H, W\)"),
    (lambda p, t: seg_head(p, t, (4, 4), window=(0, 0, 1)), InputError, "4 values"),
    (lambda p, t: seg_head(p, t, (4, 4), window=(0, 0, 1.5, 1)), InputError, r"\[0, 1\]"),
    (lambda p, t: seg_head(p, t, (4, 4), window=(0.5, 0, 0.5, 1)), InputError, "y1 > y0"),
    (lambda p, t: seg_head(p, t, (4, 4), temperature=0.0), InputError, "temperature"),
    (lambda p, t: seg_head(p, t, (4, 4), impl="cuda"), InputError, "impl must be one of"),
    (lambda p, t: seg_head(p.numpy(), t, (4, 4)), TypeError, "torch.Tensor"),
])
def test_invalid_inputs_raise_clear_errors(call, error, message):
    patch, text = make_inputs(1, 2, 3, 8, 3)
    with pytest.raises(error, match=message):
        call(patch, text)


# ----------------------------------------------------------------------------------------------
# Triton kernels against the reference (interpreter on CPU, compiled on CUDA)
# ----------------------------------------------------------------------------------------------

# (batch, h, w, D, K, out_size, dtype, window): odd grids, outputs that are not multiples
# of the grid (up- and downsampling), K below, at and above the K block, letterbox windows.
KERNEL_CASES = [
    (1, 1, 1, 16, 2, (5, 3), torch.float32, None),
    (2, 7, 7, 64, 21, (30, 25), torch.float32, None),
    (1, 14, 7, 48, 150, (17, 33), torch.float16, None),
    (1, 7, 14, 32, 1, (9, 20), torch.bfloat16, None),
    (1, 28, 28, 32, 21, (31, 29), torch.float16, None),
    (1, 37, 37, 768, 21, (40, 41), torch.float32, None),
    (1, 5, 9, 32, 1000, (11, 7), torch.float32, None),
    (2, 7, 7, 32, 21, (23, 31), torch.float32, LETTERBOX),
    (1, 14, 14, 32, 300, (19, 21), torch.bfloat16, (0.2, 0.3, 0.7, 0.65)),
    # 16x upsampling: bands of 16 rows, the first source row's 24 rows split in two.
    (1, 4, 3, 32, 21, (64, 48), torch.float32, None),
    # Non-integer scale factors (23.7 and 13.2 rows per source row), 7 rows per band.
    (2, 3, 5, 16, 37, (71, 66), torch.float16, None),
    (1, 5, 4, 16, 150, (61, 47), torch.float32, (0.05, 0.1, 0.95, 0.8)),
]


@pytest.mark.parametrize("batch, h, w, dim, prompts, out_size, dtype, window", KERNEL_CASES)
def test_kernel_matches_reference(kernel_device, batch, h, w, dim, prompts, out_size, dtype, window):
    patch, text = make_inputs(batch, h, w, dim, prompts, dtype, kernel_device)
    labels, scores = seg_head(patch, text, out_size, window=window, return_scores=True, impl="triton")
    assert labels.device == patch.device
    ref_labels, ref_scores = seg_head_ref(patch.cpu(), text.cpu(), out_size, window=window, return_scores=True)
    gap = top2_gap(full_logits(patch.cpu(), text.cpu(), out_size, window))
    assert_same_decisions(labels, scores, ref_labels, ref_scores, gap)


@pytest.mark.parametrize("prompts, temperature", [(3, 1.0), (21, 100.0), (70, 50.0)])
def test_kernel_softmax_scores(kernel_device, prompts, temperature):
    patch, text = make_inputs(2, 7, 5, 32, prompts, torch.float16, kernel_device)
    labels, scores = seg_head(patch, text, (19, 13), window=LETTERBOX, return_scores=True,
                              temperature=temperature, impl="triton")
    ref_labels, ref_scores = seg_head_ref(patch.cpu(), text.cpu(), (19, 13), window=LETTERBOX,
                                          return_scores=True, temperature=temperature)
    gap = top2_gap(full_logits(patch.cpu(), text.cpu(), (19, 13), LETTERBOX))
    decided = gap > LABEL_GAP
    torch.testing.assert_close(labels.cpu()[decided], ref_labels[decided], rtol=0, atol=0)
    torch.testing.assert_close(scores.cpu(), ref_scores, rtol=SOFTMAX_RTOL, atol=1e-7)
    assert (scores > 0).all() and (scores <= 1).all()


def test_kernel_without_scores_and_label_dtypes(kernel_device):
    for prompts, dtype in [(255, torch.uint8), (256, torch.int32)]:
        patch, text = make_inputs(1, 3, 4, 16, prompts, device=kernel_device)
        labels, scores = seg_head(patch, text, (7, 6), impl="triton")
        assert scores is None and labels.dtype == dtype
        ref_labels, _ = seg_head_ref(patch.cpu(), text.cpu(), (7, 6))
        gap = top2_gap(full_logits(patch.cpu(), text.cpu(), (7, 6)))
        torch.testing.assert_close(labels.cpu()[gap > LABEL_GAP], ref_labels[gap > LABEL_GAP], rtol=0, atol=0)


@pytest.mark.parametrize("block_k", [8, 16, 64])
def test_kernel_planted_ties_go_to_lowest_index(kernel_device, monkeypatch, block_k):
    """Stage 2's guarantee: among prompts whose stage-1 logits are equal, the lowest index
    wins, within a K block (5 and 9) and, for K blocks of 8 and 16, across K blocks (3 and
    35). The ties are planted in stage 2's input, bit for bit: stage 1 is a blocked matmul,
    which does not promise equal outputs for equal prompts (the interpreter's does not)."""
    monkeypatch.setattr(seg_head_module, "_band_configs",
                        lambda *args: [dict(TILE_X=16, BLOCK_K=block_k, num_warps=4)])
    h, w, prompts, out_size = 6, 6, 40, (17, 15)
    patch, text = make_inputs(1, h, w, 32, prompts)
    patch_logits = patch_logits_ref(patch, text)  # [1, K, h, w]
    # The duplicated prompts win over part of the image, with exactly equal logits.
    patch_logits[0, 3, :3, :3] += 2.0
    patch_logits[0, 5, 3:, 3:] += 2.0
    patch_logits[:, 9] = patch_logits[:, 5]
    patch_logits[:, 35] = patch_logits[:, 3]
    stage2_input = patch_logits.permute(0, 2, 3, 1).reshape(1, h * w, prompts).contiguous().to(kernel_device)
    labels = torch.empty((1, *out_size), dtype=torch.uint8, device=kernel_device)
    scores = torch.empty((1, *out_size), dtype=torch.float32, device=kernel_device)
    seg_head_module._launch_band_argmax(labels, scores, stage2_input, (h, w), None, None)
    labels, scores = labels.cpu(), scores.cpu()
    assert (labels == 3).any() and (labels == 5).any()
    assert not ((labels == 9) | (labels == 35)).any()
    # Elsewhere: torch's upsampling and argmax of the same logits.
    logits = upsample_logits_ref(patch_logits, out_size)
    ref_scores, ref_labels = logits.max(dim=1)
    distinct = [k for k in range(prompts) if k not in (9, 35)]
    decided = top2_gap(logits[:, distinct]) > LABEL_GAP
    torch.testing.assert_close(labels[decided], ref_labels[decided].to(torch.uint8), rtol=0, atol=0)
    torch.testing.assert_close(scores, ref_scores, rtol=0, atol=SCORE_ATOL)


def test_kernel_non_contiguous_inputs(kernel_device):
    patch, text = make_inputs(2, 9, 7, 32, 21, device=kernel_device)
    patch_t = patch.transpose(1, 2).contiguous().transpose(1, 2)  # same values, w-major memory
    text_t = text.t().contiguous().t()
    assert not patch_t.is_contiguous() and not text_t.is_contiguous()
    labels, scores = seg_head(patch_t, text_t, (25, 18), return_scores=True, impl="triton")
    expected = seg_head(patch, text, (25, 18), return_scores=True, impl="triton")
    torch.testing.assert_close((labels, scores), expected, rtol=0, atol=SCORE_ATOL)


# Every stage-2 config the launcher offers for the GPU benchmark shapes (448 / 1024 outputs
# at K = 21 / 150, and a downsampling case with K = 1000).
BAND_CONFIGS = []
for _shape in [(16, 21, 448), (16, 150, 1024), (1, 1000, 7)]:
    BAND_CONFIGS += [c for c in seg_head_module._band_configs(*_shape) if c not in BAND_CONFIGS]


@pytest.mark.parametrize("config", BAND_CONFIGS, ids=lambda c: "x{TILE_X}-k{BLOCK_K}-w{num_warps}".format(**c))
def test_kernel_every_band_config(kernel_device, monkeypatch, config):
    """Every stage-2 launch config (tile widths, K blocks) gives the reference's results,
    with softmax scores, a letterbox window and K = 37 (not a multiple of any K block)."""
    monkeypatch.setattr(seg_head_module, "_band_configs", lambda *args: [config])
    patch, text = make_inputs(2, 5, 4, 16, 37, device=kernel_device)
    labels, scores = seg_head_module._seg_head_triton(patch, text, (23, 29), LETTERBOX, True, 30.0)
    ref_labels, ref_scores = seg_head_ref(patch.cpu(), text.cpu(), (23, 29), window=LETTERBOX,
                                          return_scores=True, temperature=30.0)
    gap = top2_gap(full_logits(patch.cpu(), text.cpu(), (23, 29), LETTERBOX))
    torch.testing.assert_close(labels.cpu()[gap > LABEL_GAP], ref_labels[gap > LABEL_GAP], rtol=0, atol=0)
    torch.testing.assert_close(scores.cpu(), ref_scores, rtol=SOFTMAX_RTOL, atol=1e-7)


@pytest.mark.parametrize("dtype, logits_config", [(torch.float32, 0), (torch.float32, 1), (torch.float16, 0),
                                                  (torch.float16, 1), (torch.float16, 2), (torch.bfloat16, 1)])
def test_kernel_every_logits_config(kernel_device, interpreter_bf16_dot, dtype, logits_config):
    """Every stage-1 launch config of the float32 and the half-precision tl.dot branch."""
    patch, text = make_inputs(2, 7, 5, 80, 21, dtype, kernel_device)  # D = 80: a partial D block
    logits = torch.empty((2, 35, 21), device=kernel_device)
    half = seg_head_module._launch_patch_logits(logits, patch, text, half_dot=dtype != torch.float32,
                                                config_index=logits_config)
    assert half == (dtype != torch.float32)
    expected = patch_logits_ref(patch.cpu(), text.cpu()).permute(0, 2, 3, 1).reshape(2, 35, 21)
    # Products of float16 / bfloat16 values are exact in float32: only the summation order differs.
    torch.testing.assert_close(logits.cpu(), expected, rtol=0, atol=SCORE_ATOL)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_kernel_half_dot_branch_runs_on_cpu(kernel_device, interpreter_bf16_dot, monkeypatch, dtype):
    """half_dot=True runs stage 1's tl.dot on the half-precision operands, the branch a GPU
    takes; a spy on the launches proves CAST_F32 was off and the operands kept their dtype."""
    launched = []
    original_jit = seg_head_module.jit

    def spying_jit(fn):
        kernel = original_jit(fn)

        class Spy:
            def __getitem__(self, grid):
                def run(*args, **kwargs):
                    if fn is seg_head_module._patch_logits_kernel:
                        launched.append((kwargs["CAST_F32"], args[4].dtype, args[9].dtype))
                    return kernel[grid](*args, **kwargs)
                return run
        return Spy()

    monkeypatch.setattr(seg_head_module, "jit", spying_jit)
    patch, text = make_inputs(2, 6, 7, 48, 21, dtype, kernel_device)
    labels, scores = seg_head_module._seg_head_triton(patch, text, (37, 29), None, True, None, half_dot=True)
    assert launched == [(False, dtype, dtype)]
    ref_labels, ref_scores = seg_head_ref(patch.cpu(), text.cpu(), (37, 29), return_scores=True)
    assert_same_decisions(labels.cpu(), scores.cpu(), ref_labels, ref_scores,
                          top2_gap(full_logits(patch.cpu(), text.cpu(), (37, 29))))


def test_kernel_offsets_past_2_31_interpreter(kernel_device, tmp_path):
    """Image 2 of every buffer starts past element 2^31 (sparse memory-mapped files, so
    only the touched pages exist): 32-bit image offsets would wrap. Both stages must give
    image 2 the results of the same image computed alone."""
    if kernel_device != "cpu":
        pytest.skip("interpreter case (on a GPU, test_kernel_offsets_past_2_31 covers this)")
    stride = 2 ** 30 + 64  # elements per image: image 2 starts at 2^31 + 128

    def sparse(name, dtype, shape):
        storage = torch.from_file(str(tmp_path / name), shared=True, size=3 * stride, dtype=dtype)
        inner = torch.empty(shape[1:]).stride()
        return storage.as_strided((3, *shape[1:]), (stride, *inner))

    patch, text = make_inputs(3, 4, 5, 16, 21, seed=3)
    patch_big = sparse("patch.bin", torch.float32, patch.shape)
    patch_big.copy_(patch)
    logits = sparse("logits.bin", torch.float32, (3, 20, 21))
    seg_head_module._launch_patch_logits(logits, patch_big, text)
    expected_logits = patch_logits_ref(patch, text).permute(0, 2, 3, 1).reshape(3, 20, 21)
    torch.testing.assert_close(logits[2], expected_logits[2], rtol=0, atol=SCORE_ATOL)

    labels = sparse("labels.bin", torch.uint8, (3, 37, 41))
    scores = sparse("scores.bin", torch.float32, (3, 37, 41))
    seg_head_module._launch_band_argmax(labels, scores, logits, (4, 5), LETTERBOX, None)
    alone_labels, alone_scores = seg_head_ref(patch[2:], text, (37, 41), window=LETTERBOX, return_scores=True)
    gap = top2_gap(full_logits(patch[2:], text, (37, 41), LETTERBOX))
    assert_same_decisions(labels[2:], scores[2:], alone_labels, alone_scores, gap)


def test_tuning_choices_without_a_gpu():
    """Interpreter, forced and small launches take their config without timing anything."""
    from clippy_rt.kernels import _triton_support

    configs = [dict(a=0), dict(a=1), dict(a=2)]
    ran = []
    assert _triton_support.launch_tuned(("t",), configs, ran.append, interpreting=True) == 0
    assert _triton_support.launch_tuned(("t",), configs, ran.append, interpreting=False, config_index=2) == 2
    assert _triton_support.launch_tuned(("t",), configs, ran.append, interpreting=False, work=10) == 0
    assert ran == [dict(a=0), dict(a=2), dict(a=0)]
    assert ("t",) not in _triton_support._tuned


@pytest.mark.gpu
def test_tuning_on_gpu_keeps_results(monkeypatch):
    """The tuner times every config on first use, keeps the fastest, and the outputs are
    those of a complete launch."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU; none on this machine")
    from clippy_rt.kernels import _triton_support

    monkeypatch.setattr(_triton_support, "TUNE_MIN_WORK", 0)
    monkeypatch.setattr(_triton_support, "_tuned", {})
    patch, text = make_inputs(2, 14, 14, 768, 150, torch.float16, "cuda")
    labels, scores = seg_head(patch, text, (224, 224), window=LETTERBOX, return_scores=True, impl="triton")
    assert {key[0] for key in _triton_support._tuned} == {"seg_head.logits", "seg_head.bands"}
    ref_labels, ref_scores = seg_head_ref(patch, text, (224, 224), window=LETTERBOX, return_scores=True)
    assert_same_decisions(labels, scores, ref_labels, ref_scores,
                          top2_gap(full_logits(patch, text, (224, 224), LETTERBOX)))


def test_kernel_empty_batch(kernel_device):
    patch, text = make_inputs(1, 3, 3, 16, 4, device=kernel_device)
    labels, scores = seg_head(patch[:0], text, (5, 5), return_scores=True, impl="triton")
    assert labels.shape == (0, 5, 5) and scores.shape == (0, 5, 5)


# ----------------------------------------------------------------------------------------------
# The large sweep, for the GPU run
# ----------------------------------------------------------------------------------------------

# (h, w) pairs from {1, 7, 14, 28, 37}: squares and mixed aspect ratios.
GRIDS = [(1, 1), (7, 7), (14, 14), (28, 28), (37, 37), (1, 37), (37, 7), (14, 28)]


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.parametrize("prompts", [1, 2, 21, 150, 1000])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("window", [None, LETTERBOX])
def test_kernel_sweep_gpu(prompts, dtype, window):
    for index, (h, w) in enumerate(GRIDS):
        out_size = (h * 16 + 3, w * 13 + 5)
        patch, text = make_inputs(2, h, w, 768, prompts, dtype, "cuda", seed=index)
        labels, scores = seg_head(patch, text, out_size, window=window, return_scores=True, impl="triton")
        ref_labels, ref_scores = seg_head_ref(patch, text, out_size, window=window, return_scores=True)
        gap = top2_gap(full_logits(patch, text, out_size, window))
        assert_same_decisions(labels, scores, ref_labels, ref_scores, gap)


@pytest.mark.gpu
@pytest.mark.slow
def test_kernel_offsets_past_2_31():
    """9 x 16384 x 16400 labels: the last image starts at element 8 * 16384 * 16400 > 2^31,
    so 32-bit offsets would wrap. Its labels must equal those of the same image run alone."""
    patch, text = make_inputs(9, 4, 4, 64, 5, torch.float16, "cuda")
    labels, _ = seg_head(patch, text, (16384, 16400), impl="triton")
    assert labels[8].storage_offset() == 8 * 16384 * 16400 > 2 ** 31
    alone, _ = seg_head(patch[8:], text, (16384, 16400), impl="triton")
    assert torch.equal(labels[8], alone[0])
