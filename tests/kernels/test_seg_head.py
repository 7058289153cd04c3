"""Segmentation head: the torch reference against independent torch formulations, and the
Triton kernels (interpreter on CPU, compiled on CUDA) against the reference."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from clippy_rt.errors import BackendUnavailableError, InputError
from clippy_rt.kernels.seg_head import (patch_logits_ref, seg_head, seg_head_ref,
                                        seg_head_reference_procedure, top2_gap, upsample_logits_ref)

# Seg-head arithmetic is float32 whatever the input dtype, so kernel and reference differ
# only by float32 summation order: scores agree to SCORE_ATOL, and labels agree wherever
# the reference's top-2 gap exceeds LABEL_GAP.
SCORE_ATOL = 1e-5
LABEL_GAP = 1e-5

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
    monkeypatch.setattr(seg_head_module, "_REF_CHUNK_ELEMENTS", 2 * 13 * 17 * 7)  # chunks of 7 prompts
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
    for backend in ("auto", "torch"):
        got = seg_head(patch, text, (19, 23), window=LETTERBOX, return_scores=True, backend=backend)
        torch.testing.assert_close(got, expected, rtol=0, atol=0)


NO_TRITON_SCRIPT = """
import sys
sys.modules["triton"] = None  # `import triton` now raises ImportError
import torch
import clippy_rt.kernels as kernels
from clippy_rt.errors import BackendUnavailableError
patch, text = torch.randn(1, 3, 3, 8), torch.randn(4, 8)
labels, _ = kernels.seg_head.seg_head(patch, text, (5, 5))
assert labels.shape == (1, 5, 5)
kernels.patch_pool.patch_pool(torch.randn(1, 5, 8))
try:
    kernels.seg_head.seg_head(patch, text, (5, 5), backend="triton")
except BackendUnavailableError as exc:
    assert "pip install triton" in str(exc), exc
else:
    raise SystemExit("backend='triton' without triton did not raise")
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
        seg_head(patch, text, (4, 4), backend="triton")


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
    (lambda p, t: seg_head(p, t, (4, 4), backend="cuda"), InputError, "backend must be one of"),
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
]


@pytest.mark.parametrize("batch, h, w, dim, prompts, out_size, dtype, window", KERNEL_CASES)
def test_kernel_matches_reference(kernel_device, batch, h, w, dim, prompts, out_size, dtype, window):
    patch, text = make_inputs(batch, h, w, dim, prompts, dtype, kernel_device)
    labels, scores = seg_head(patch, text, out_size, window=window, return_scores=True, backend="triton")
    assert labels.device == patch.device
    ref_labels, ref_scores = seg_head_ref(patch.cpu(), text.cpu(), out_size, window=window, return_scores=True)
    gap = top2_gap(full_logits(patch.cpu(), text.cpu(), out_size, window))
    assert_same_decisions(labels, scores, ref_labels, ref_scores, gap)


@pytest.mark.parametrize("prompts, temperature", [(3, 1.0), (21, 100.0), (70, 50.0)])
def test_kernel_softmax_scores(kernel_device, prompts, temperature):
    patch, text = make_inputs(2, 7, 5, 32, prompts, torch.float16, kernel_device)
    labels, scores = seg_head(patch, text, (19, 13), window=LETTERBOX, return_scores=True,
                              temperature=temperature, backend="triton")
    ref_labels, ref_scores = seg_head_ref(patch.cpu(), text.cpu(), (19, 13), window=LETTERBOX,
                                          return_scores=True, temperature=temperature)
    gap = top2_gap(full_logits(patch.cpu(), text.cpu(), (19, 13), LETTERBOX))
    decided = gap > LABEL_GAP
    torch.testing.assert_close(labels.cpu()[decided], ref_labels[decided], rtol=0, atol=0)
    torch.testing.assert_close(scores.cpu(), ref_scores, rtol=1e-4, atol=1e-6)
    assert (scores > 0).all() and (scores <= 1).all()


def test_kernel_without_scores_and_label_dtypes(kernel_device):
    for prompts, dtype in [(255, torch.uint8), (256, torch.int32)]:
        patch, text = make_inputs(1, 3, 4, 16, prompts, device=kernel_device)
        labels, scores = seg_head(patch, text, (7, 6), backend="triton")
        assert scores is None and labels.dtype == dtype
        ref_labels, _ = seg_head_ref(patch.cpu(), text.cpu(), (7, 6))
        gap = top2_gap(full_logits(patch.cpu(), text.cpu(), (7, 6)))
        torch.testing.assert_close(labels.cpu()[gap > LABEL_GAP], ref_labels[gap > LABEL_GAP], rtol=0, atol=0)


def test_kernel_planted_ties_go_to_lowest_index(kernel_device):
    """Duplicated prompts give bit-identical logits; the lower index must win, within a K
    block (5 and 9) and across K blocks (3 and 35)."""
    patch, text = make_inputs(1, 6, 6, 32, 40)
    text[9] = text[5]
    text[35] = text[3]
    # Make the duplicated prompts win over part of the image.
    patch[0, :3, :3] = text[3]
    patch[0, 3:, 3:] = text[5]
    patch, text = patch.to(kernel_device), text.to(kernel_device)
    labels, scores = seg_head(patch, text, (17, 15), return_scores=True, backend="triton")
    ref_labels, ref_scores = seg_head_ref(patch.cpu(), text.cpu(), (17, 15), return_scores=True)
    labels = labels.cpu()
    assert (labels == 3).any() and (labels == 5).any()
    assert not ((labels == 9) | (labels == 35)).any()
    distinct = [k for k in range(40) if k not in (9, 35)]
    gap = top2_gap(full_logits(patch.cpu(), text.cpu()[distinct], (17, 15)))
    torch.testing.assert_close(labels[gap > LABEL_GAP], ref_labels[gap > LABEL_GAP], rtol=0, atol=0)
    torch.testing.assert_close(scores.cpu(), ref_scores, rtol=0, atol=SCORE_ATOL)


def test_kernel_non_contiguous_inputs(kernel_device):
    patch, text = make_inputs(2, 9, 7, 32, 21, device=kernel_device)
    patch_t = patch.transpose(1, 2).contiguous().transpose(1, 2)  # same values, w-major memory
    text_t = text.t().contiguous().t()
    assert not patch_t.is_contiguous() and not text_t.is_contiguous()
    labels, scores = seg_head(patch_t, text_t, (25, 18), return_scores=True, backend="triton")
    expected = seg_head(patch, text, (25, 18), return_scores=True, backend="triton")
    torch.testing.assert_close((labels, scores), expected, rtol=0, atol=SCORE_ATOL)


def test_kernel_empty_batch(kernel_device):
    patch, text = make_inputs(1, 3, 3, 16, 4, device=kernel_device)
    labels, scores = seg_head(patch[:0], text, (5, 5), return_scores=True, backend="triton")
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
        labels, scores = seg_head(patch, text, out_size, window=window, return_scores=True, backend="triton")
        ref_labels, ref_scores = seg_head_ref(patch, text, out_size, window=window, return_scores=True)
        gap = top2_gap(full_logits(patch, text, out_size, window))
        assert_same_decisions(labels, scores, ref_labels, ref_scores, gap)


@pytest.mark.gpu
@pytest.mark.slow
def test_kernel_offsets_past_2_31():
    """9 x 16384 x 16384 labels: the last image starts past element 2^31, so 32-bit
    offsets would wrap. Its labels must equal those of the same image run alone."""
    patch, text = make_inputs(9, 4, 4, 64, 5, torch.float16, "cuda")
    labels, _ = seg_head(patch, text, (16384, 16384), backend="triton")
    assert labels[8].numel() * 8 > 2 ** 31
    alone, _ = seg_head(patch[8:], text, (16384, 16384), backend="triton")
    assert torch.equal(labels[8], alone[0])
