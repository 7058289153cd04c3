"""Segmentation head: patch-text similarity, bilinear upsampling and argmax, fused.

For image b, prompt k and output pixel (y, x) (docs/MODEL.md, "Segmentation"):

    patch_logits[b, i, j, k] = < P[b, i, j, :], T[k, :] >                  (stage 1)
    logits[b, k, y, x]       = bilinear(patch_logits[b, :, :, k])(y, x)     (stage 2)
    labels[b, y, x]          = argmax_k logits[b, k, y, x]   (lowest k on ties)
    scores[b, y, x]          = max_k logits[b, k, y, x]
                               or softmax_k(temperature * logits[b, :, y, x])[label]

P is [B, h, w, D] (normalised patch features on the h x w grid), T is [K, D].
Bilinear upsampling is linear, so upsampling the K patch logits equals upsampling
the D feature channels and then taking the dot product (the reference procedure),
at a fraction of the cost.

Sampling (``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)``
and its edge clamping). The optional ``window = (y0, x0, y1, x1)`` is a sub-rectangle
of the model input frame in normalised coordinates (the h x w grid covers
[0, 1] x [0, 1]); the H x W output covers that rectangle. Output row y samples

    scale_y = (y1 - y0) * h / H
    s       = y0 * h + scale_y * (y + 0.5) - 0.5,   s <- max(s, 0)
    i0      = min(floor(s), h - 1),  i1 = min(i0 + 1, h - 1),  l1 = min(s - i0, 1),  l0 = 1 - l1

and likewise for columns; the value is
l0_y * (l0_x a00 + l1_x a01) + l1_y * (l0_x a10 + l1_x a11).
``window=None`` is (0, 0, 1, 1), for which this is F.interpolate(size=(H, W)) (the
torch reference calls F.interpolate itself there).

Triton design, two kernels. Stage 1 is a small matmul [B*h*w, D] x [D, K] with
``tl.dot`` (float32 accumulation, K padded to the tile, D looped) written as float32
[B, h*w, K] (K contiguous, so the four neighbour rows of a pixel are four contiguous K-vectors). Stage 2 gives each
program a tile of output pixels of one image; it gathers the four neighbour rows,
interpolates BLOCK_K values at a time, and keeps a running max, argmax and (for
softmax scores) a running sum of exp(temperature * (logit - max)). Only labels and
scores are written: [B, K, H, W] never exists. Fusing stage 1 into stage 2 would
recompute each patch logit for every output pixel that touches it (hundreds of times
at a 16x upsampling, each a D = 768 dot product), while the [B, h*w, K] float32
intermediate is small (2 MB at batch 32, 448 x 448, K = 21) and stays in L2, so two
launches are cheaper. benchmarks/gpu_check.py times both stages together.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from clippy_rt.errors import InputError

from ._triton_support import device_guard, jit, next_power_of_2, resolve_backend
# The input checks are shared with the CUDA C++ head (native.py), which this module dispatches to.
from .seg_head_inputs import FLOAT_DTYPES, Window, _check_inputs, label_dtype  # noqa: F401

tl = None  # bound to triton.language when a kernel is first launched (see _triton_support.jit)

# Above this many elements of [B, K_chunk, H, W] float32 the torch reference walks K in chunks.
_REF_CHUNK_ELEMENTS = 1 << 25



# ----------------------------------------------------------------------------------------------
# Triton kernels
# ----------------------------------------------------------------------------------------------

def _patch_logits_kernel(
    logits_ptr, stride_lb, stride_lp, stride_lk,
    patch_ptr, stride_pb, stride_ph, stride_pw, stride_pd,
    text_ptr, stride_tk, stride_td,
    B, h, w, D, K,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, CAST_F32: tl.constexpr,
):
    """logits[b, i*w + j, k] = sum_d patch[b, i, j, d] * text[k, d], float32.

    logits [B, h*w, K] float32; patch [B, h, w, D]; text [K, D]. Grid:
    (cdiv(B*h*w, BLOCK_M), cdiv(K, BLOCK_N)); rows m = (b*h + i)*w + j.
    """
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    # int64: B*h*w*D and the stride products can pass 2^31 for large batches.
    offs_m = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    hw = h * w
    mask_m = offs_m < B * hw
    mask_n = offs_n < K
    b = offs_m // hw
    rest = offs_m % hw
    row = b * stride_pb + (rest // w) * stride_ph + (rest % w) * stride_pw
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        mask_d = offs_d < D
        a = tl.load(patch_ptr + row[:, None] + offs_d[None, :] * stride_pd,
                    mask=mask_m[:, None] & mask_d[None, :], other=0.0)
        t = tl.load(text_ptr + offs_n[None, :] * stride_tk + offs_d[:, None] * stride_td,
                    mask=mask_n[None, :] & mask_d[:, None], other=0.0)
        if CAST_F32:
            a = a.to(tl.float32)
            t = t.to(tl.float32)
        # "ieee": no TF32 rounding of float32 inputs; half inputs multiply exactly in float32.
        acc = tl.dot(a, t, acc, input_precision="ieee")
    out = logits_ptr + b[:, None] * stride_lb + rest[:, None] * stride_lp + offs_n[None, :] * stride_lk
    tl.store(out, acc, mask=mask_m[:, None] & mask_n[None, :])


def _upsample_argmax_kernel(
    labels_ptr, stride_ob, stride_oy, stride_ox,
    scores_ptr, stride_sb, stride_sy, stride_sx,
    logits_ptr, stride_lb, stride_lp, stride_lk,
    h, w, K, H, W,
    offset_y, scale_y, offset_x, scale_x, temperature,
    BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr, WRITE_SCORES: tl.constexpr, SOFTMAX: tl.constexpr,
):
    """labels[b, y, x] = argmax_k bilinear(logits[b, :, k])(y, x); scores as in the module doc.

    labels [B, H, W] (uint8 or int32); scores [B, H, W] float32 (written when WRITE_SCORES);
    logits [B, h*w, K] float32. Source coordinate of row y: offset_y + scale_y*(y+0.5) - 0.5.
    Grid: (cdiv(H*W, BLOCK_P), B).
    """
    pid_p = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    offs_p = pid_p.to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    mask_p = offs_p < H * W
    y = offs_p // W
    x = offs_p % W

    src_y = tl.maximum(offset_y + scale_y * (y.to(tl.float32) + 0.5) - 0.5, 0.0)
    src_x = tl.maximum(offset_x + scale_x * (x.to(tl.float32) + 0.5) - 0.5, 0.0)
    y0 = tl.minimum(src_y.to(tl.int32), h - 1)  # src >= 0, so truncation is floor
    x0 = tl.minimum(src_x.to(tl.int32), w - 1)
    y1 = tl.minimum(y0 + 1, h - 1)
    x1 = tl.minimum(x0 + 1, w - 1)
    ly1 = tl.minimum(src_y - y0.to(tl.float32), 1.0)
    lx1 = tl.minimum(src_x - x0.to(tl.float32), 1.0)
    ly0 = 1.0 - ly1
    lx0 = 1.0 - lx1

    base = logits_ptr + b * stride_lb
    row00 = base + (y0 * w + x0).to(tl.int64)[:, None] * stride_lp
    row01 = base + (y0 * w + x1).to(tl.int64)[:, None] * stride_lp
    row10 = base + (y1 * w + x0).to(tl.int64)[:, None] * stride_lp
    row11 = base + (y1 * w + x1).to(tl.int64)[:, None] * stride_lp

    best = tl.full((BLOCK_P,), float("-inf"), tl.float32)
    best_k = tl.zeros((BLOCK_P,), dtype=tl.int32)
    sum_exp = tl.zeros((BLOCK_P,), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < K
        mask = mask_p[:, None] & mask_k[None, :]
        col = offs_k[None, :] * stride_lk
        a00 = tl.load(row00 + col, mask=mask, other=0.0)
        a01 = tl.load(row01 + col, mask=mask, other=0.0)
        a10 = tl.load(row10 + col, mask=mask, other=0.0)
        a11 = tl.load(row11 + col, mask=mask, other=0.0)
        top = lx0[:, None] * a00 + lx1[:, None] * a01
        bottom = lx0[:, None] * a10 + lx1[:, None] * a11
        val = ly0[:, None] * top + ly1[:, None] * bottom
        val = tl.where(mask_k[None, :], val, float("-inf"))

        block_max = tl.max(val, axis=1)
        # Lowest index reaching the block max: ties go to the lowest k, like torch.argmax.
        block_k = tl.min(tl.where(val == block_max[:, None], offs_k[None, :], 2147483647), axis=1)
        if SOFTMAX:
            new_best = tl.maximum(best, block_max)
            sum_exp = sum_exp * tl.exp(temperature * (best - new_best)) + tl.sum(
                tl.exp(temperature * (val - new_best[:, None])), axis=1)
        # Strict '>' keeps the earlier block's index on a tie between blocks.
        better = block_max > best
        best_k = tl.where(better, block_k.to(tl.int32), best_k)
        best = tl.where(better, block_max, best)

    tl.store(labels_ptr + b * stride_ob + y * stride_oy + x * stride_ox,
             best_k.to(labels_ptr.dtype.element_ty), mask=mask_p)
    if WRITE_SCORES:
        if SOFTMAX:
            score = 1.0 / sum_exp
        else:
            score = best
        tl.store(scores_ptr + b * stride_sb + y * stride_sy + x * stride_sx, score, mask=mask_p)


def _axis_mapping(window: Optional[Window], h: int, w: int, height: int, width: int):
    """(offset_y, scale_y, offset_x, scale_x): source = offset + scale*(dst + 0.5) - 0.5."""
    y0, x0, y1, x1 = window if window is not None else (0.0, 0.0, 1.0, 1.0)
    # Computed in float64 and rounded once: for the full window this is float32(h / H),
    # the scale F.interpolate uses.
    return y0 * h, (y1 - y0) * h / height, x0 * w, (x1 - x0) * w / width


# ----------------------------------------------------------------------------------------------
# Torch reference
# ----------------------------------------------------------------------------------------------

def patch_logits_ref(patch_features: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
    """Patch logits [B, K, h, w] float32 = P . T^T, computed in float32.

    One [B*h*w, D] x [D, K] matmul; the result is a channels-last view (K innermost),
    which F.interpolate keeps, so the max over K later reads contiguous memory.
    """
    batch, h, w, dim = patch_features.shape
    logits = patch_features.float().reshape(batch * h * w, dim) @ text_embeds.float().t()
    return logits.reshape(batch, h, w, -1).permute(0, 3, 1, 2)


def _axis_taps(size_in: int, size_out: int, offset: float, scale: float, device):
    """Neighbour indices (i0, i1) [size_out] int64 and weights (l0, l1) float32 of one axis."""
    dst = torch.arange(size_out, device=device, dtype=torch.float32)
    src = (torch.tensor(offset, dtype=torch.float32) + torch.tensor(scale, dtype=torch.float32) * (dst + 0.5)
           - 0.5).clamp_min(0.0)
    i0 = src.floor().long().clamp_max(size_in - 1)
    i1 = (i0 + 1).clamp_max(size_in - 1)
    l1 = (src - i0.float()).clamp(0.0, 1.0)
    return i0, i1, 1.0 - l1, l1


def upsample_logits_ref(patch_logits: torch.Tensor, out_size: Tuple[int, int],
                        window: Optional[Window] = None) -> torch.Tensor:
    """Bilinear upsampling [B, K, h, w] -> [B, K, H, W] with the sampling of the module doc.

    ``window`` None (or the full frame) is F.interpolate(size=out_size, mode="bilinear",
    align_corners=False); otherwise an explicit separable gather with the same formula.
    """
    height, width = out_size
    if window is None or tuple(window) == (0.0, 0.0, 1.0, 1.0):
        return F.interpolate(patch_logits, size=(height, width), mode="bilinear", align_corners=False)
    h, w = patch_logits.shape[-2:]
    offset_y, scale_y, offset_x, scale_x = _axis_mapping(window, h, w, height, width)
    y0, y1, wy0, wy1 = _axis_taps(h, height, offset_y, scale_y, patch_logits.device)
    x0, x1, wx0, wx1 = _axis_taps(w, width, offset_x, scale_x, patch_logits.device)
    rows_top = patch_logits[:, :, y0, :]
    rows_bottom = patch_logits[:, :, y1, :]
    top = wx0 * rows_top[..., x0] + wx1 * rows_top[..., x1]
    bottom = wx0 * rows_bottom[..., x0] + wx1 * rows_bottom[..., x1]
    return wy0[:, None] * top + wy1[:, None] * bottom


def seg_head_ref(patch_features: torch.Tensor, text_embeds: torch.Tensor, out_size: Sequence[int], *,
                 window: Optional[Sequence[float]] = None, return_scores: bool = False,
                 temperature: Optional[float] = None, backend: str = "torch"
                 ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Pure-torch segmentation head; same contract as :func:`seg_head` (``backend`` is ignored).

    Patch logits in float32 (matmul), upsampled with F.interpolate (or the explicit
    gather for a window), then max / argmax over K. Large outputs walk K in chunks with a
    running max (and running sum of exponentials) so [B, K, H, W] is held one chunk at a time.
    """
    (height, width), window, temperature = _check_inputs(patch_features, text_embeds, out_size,
                                                         window, temperature)
    batch = patch_features.shape[0]
    num_prompts = text_embeds.shape[0]
    logits = patch_logits_ref(patch_features, text_embeds)
    chunk = max(1, min(num_prompts, _REF_CHUNK_ELEMENTS // max(1, batch * height * width)))

    best = best_k = sum_exp = None
    for k0 in range(0, num_prompts, chunk):
        up = upsample_logits_ref(logits[:, k0:k0 + chunk], (height, width), window)
        # torch.max over a dim returns the first maximal index on ties, as argmax does.
        chunk_max, chunk_k = up.max(dim=1)
        chunk_k += k0
        if best is None:
            best, best_k = chunk_max, chunk_k
            if temperature is not None:
                sum_exp = torch.exp(temperature * (up - best[:, None])).sum(dim=1)
            continue
        new_best = torch.maximum(best, chunk_max)
        if temperature is not None:
            sum_exp = sum_exp * torch.exp(temperature * (best - new_best)) + torch.exp(
                temperature * (up - new_best[:, None])).sum(dim=1)
        best_k = torch.where(chunk_max > best, chunk_k, best_k)  # strict: an earlier chunk keeps a tie
        best = new_best

    labels = best_k.to(label_dtype(num_prompts))
    if not return_scores:
        return labels, None
    scores = best if temperature is None else 1.0 / sum_exp
    return labels, scores


def seg_head_reference_procedure(patch_features: torch.Tensor, text_embeds: torch.Tensor,
                                 out_size: Sequence[int]) -> Tuple[torch.Tensor, torch.Tensor]:
    """docs/MODEL.md's reference procedure: upsample all D channels, then dot with T, then argmax.

    Returns (labels [B, H, W] int64, logits [B, K, H, W] float32). Memory grows with
    B*D*H*W (about 616 MB of float32 for one 448 x 448 image at D = 768): for tests and
    benchmarks only.
    """
    (height, width), _, _ = _check_inputs(patch_features, text_embeds, out_size, None, None)
    feature_map = patch_features.float().permute(0, 3, 1, 2)
    upsampled = F.interpolate(feature_map, size=(height, width), mode="bilinear", align_corners=False)
    logits = torch.einsum("bdhw,kd->bkhw", upsampled, text_embeds.float())
    return logits.argmax(dim=1), logits


def top2_gap(logits: torch.Tensor) -> torch.Tensor:
    """Gap between the largest and second largest logit over dim 1: [B, K, H, W] -> [B, H, W].

    +inf when K == 1 (the argmax cannot flip). Labels of two implementations may differ
    only where this gap is within their rounding.
    """
    if logits.shape[1] == 1:
        return torch.full_like(logits[:, 0], float("inf"))
    top = logits.topk(2, dim=1).values
    return top[:, 0] - top[:, 1]


# ----------------------------------------------------------------------------------------------
# Public launcher
# ----------------------------------------------------------------------------------------------

def seg_head(patch_features: torch.Tensor, text_embeds: torch.Tensor, out_size: Sequence[int], *,
             window: Optional[Sequence[float]] = None, return_scores: bool = False,
             temperature: Optional[float] = None, backend: str = "auto"
             ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Labels (and scores) of every output pixel from patch features and text embeddings.

    Args:
        patch_features: [B, h, w, D] float16 / bfloat16 / float32, normalised patch features.
        text_embeds: [K, D] float16 / bfloat16 / float32, normalised text embeddings, K >= 1.
        out_size: (H, W) of the output.
        window: optional (y0, x0, y1, x1) in [0, 1] of the model input frame that the output
            covers (undoes a letterbox: labels come back at the original image size).
        return_scores: also return the scores.
        temperature: when given, scores are softmax(temperature * logits) at the label (a
            probability over the K prompts; pass the classification logit scale, e.g.
            exp(logit_scale) = 100); otherwise scores are the winning logit (cosine similarity).
            It has no effect on the labels.
        backend: "auto" (for CUDA tensors Triton when it imports, else the CUDA C++
            library when it loads; torch otherwise), "triton" (CPU tensors only under
            TRITON_INTERPRET=1), "native" (the CUDA C++ library, ``kernels.native``) or "torch".

    Returns:
        (labels [B, H, W] uint8 when K <= 255 else int32, scores [B, H, W] float32 or None).
        Ties go to the lowest prompt index. All arithmetic is float32 from the given inputs.
    """
    tensors = isinstance(patch_features, torch.Tensor) and isinstance(text_embeds, torch.Tensor)
    if backend == "native" or (backend == "auto" and tensors and _native_is_next(patch_features, text_embeds)):
        from .native import seg_head_native

        return seg_head_native(patch_features, text_embeds, out_size, window=window,
                               return_scores=return_scores, temperature=temperature)
    chosen = resolve_backend(backend, (patch_features, text_embeds), "seg_head") if tensors else "torch"
    if chosen == "torch":
        return seg_head_ref(patch_features, text_embeds, out_size, window=window,
                            return_scores=return_scores, temperature=temperature)
    (height, width), window, temperature = _check_inputs(patch_features, text_embeds, out_size,
                                                         window, temperature)
    if patch_features.shape[0] > 65535:
        raise InputError(f"the Triton seg head takes at most 65535 images per call (a CUDA grid limit), "
                         f"got {patch_features.shape[0]}")
    with device_guard(patch_features):
        return _seg_head_triton(patch_features, text_embeds, (height, width), window, return_scores,
                                temperature)


def _native_is_next(patch_features: torch.Tensor, text_embeds: torch.Tensor) -> bool:
    """For ``backend="auto"``: CUDA tensors, Triton unusable, and the CUDA C++ library loads."""
    if not (patch_features.is_cuda and text_embeds.is_cuda):
        return False
    if resolve_backend("auto", (patch_features, text_embeds), "seg_head") == "triton":
        return False
    from .native import native_available

    return native_available()


def _seg_head_triton(patch_features, text_embeds, out_size, window, return_scores, temperature):
    batch, h, w, dim = patch_features.shape
    num_prompts = text_embeds.shape[0]
    height, width = out_size
    device = patch_features.device
    labels = torch.empty((batch, height, width), dtype=label_dtype(num_prompts), device=device)
    scores = torch.empty((batch, height, width), dtype=torch.float32, device=device) if return_scores else None
    if batch == 0:
        return labels, scores

    # Stage 1: patch logits [B, h*w, K] float32.
    logits = torch.empty((batch, h * w, num_prompts), dtype=torch.float32, device=device)
    same_half = patch_features.dtype == text_embeds.dtype and patch_features.dtype != torch.float32
    # tl.dot needs both operands in one dtype; mixed or float32 inputs go through float32.
    cast_f32 = not same_half or not patch_features.is_cuda
    block_m = 64
    block_n = min(max(16, next_power_of_2(num_prompts)), 64)
    block_d = 32 if cast_f32 else 64
    grid = (_cdiv(batch * h * w, block_m), _cdiv(num_prompts, block_n))
    jit(_patch_logits_kernel)[grid](
        logits, *logits.stride(),
        patch_features, *patch_features.stride(),
        text_embeds, *text_embeds.stride(),
        batch, h, w, dim, num_prompts,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d, CAST_F32=cast_f32,
    )

    # Stage 2: upsample, argmax (and score) per output pixel.
    offset_y, scale_y, offset_x, scale_x = _axis_mapping(window, h, w, height, width)
    block_k = min(next_power_of_2(num_prompts), 32)
    block_p = 128 if block_k <= 16 else 64
    score_out = scores if scores is not None else labels  # never written when WRITE_SCORES is off
    grid = (_cdiv(height * width, block_p), batch)
    jit(_upsample_argmax_kernel)[grid](
        labels, *labels.stride(),
        score_out, *score_out.stride(),
        logits, *logits.stride(),
        h, w, num_prompts, height, width,
        offset_y, scale_y, offset_x, scale_x, temperature if temperature is not None else 1.0,
        BLOCK_P=block_p, BLOCK_K=block_k, WRITE_SCORES=scores is not None,
        SOFTMAX=temperature is not None,
    )
    return labels, scores


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)
