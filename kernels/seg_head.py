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

Triton design, two kernels, bounded by reading the patch features once and writing the
labels once.

Stage 1 is a small matmul [B*h*w, D] x [D, K] with ``tl.dot`` (float32 accumulation, D
looped; float16 / bfloat16 operands go to the tensor cores as they are, float32 or mixed
operands are cast to float32 and multiplied without TF32 rounding) written as float32
[B, h*w, K], K contiguous. A K block covers up to 256 prompts, so each feature row is
read once. Fusing it into stage 2 would recompute each patch logit (a D = 768 dot
product) for every output pixel that touches it; the intermediate is small (2 MB at
batch 32, 448 x 448, K = 21; 79 MB at 1024, K = 150) and is read back from L2 or once
from memory.

Stage 2 is organised around the sharing of the four neighbouring patch-logit rows. All
output pixels between the same two source rows i0 and i1 = min(i0 + 1, h - 1) (a run of
about H / h output rows: 16 at patch 16 and native scale, any count for non-integer
scales and windows) need only those two rows of the patch grid. A band is such a run of
output rows, cut into pieces of at most BAND_Y rows (a power of two, ~ H / h, at most
16); a program takes one band, TILE_X output columns and one image. For each block of
BLOCK_K prompts it gathers rows i0 and i1 at its columns' two neighbours j0 and j1
(four [TILE_X, BLOCK_K] loads, from L1/L2), interpolates along x once (``top`` and
``bottom``), then forms the [BAND_Y, TILE_X, BLOCK_K] logits of the whole band as
l0_y * top + l1_y * bottom in registers and folds them into a running max / argmax (and
the running sum of exp(temperature * (logit - max)) for softmax scores) per pixel. So a
patch-logit row is fetched once per band instead of once per output pixel (BAND_Y = 16
times fewer loads at 16x upsampling), the arithmetic per pixel and prompt is one FMA
(top + l1_y * (bottom - top)) plus the max / argmax, and labels are written as
[BAND_Y, TILE_X] tiles, contiguous along x. [B, K, H, W] never exists. The config set
includes BLOCK_K = 1, where the max / argmax is a purely elementwise update per prompt
(no reduction across lanes); the tuner picks per shape class.

The per-axis taps (source index i0 and weight l1 of every output row and column, the
module formula in float32, the same code as the torch reference's window path) and the
band table are computed once per (grid, output size, window, device) on the host and
cached; the kernel does no coordinate arithmetic of its own, so kernel and reference
agree on every tap, also for non-integer scale factors.

Ties: within a K block the lowest index reaching the block maximum wins; across blocks
a later block replaces the running best only when strictly greater, so the overall
result is the lowest index, as torch.argmax. Offsets that can pass 2^31 (image, row and
patch-row offsets) are computed in int64.

Launch parameters (BLOCK_M / BLOCK_D / warps for stage 1; TILE_X / BLOCK_K / warps for
stage 2) come from small config sets; on a GPU the first call of each shape class times
them and keeps the fastest (``_triton_support.launch_tuned``). benchmarks/gpu_check.py
times both stages together.
"""

from __future__ import annotations

import functools
from typing import Optional, Sequence, Tuple

import torch

from clippy_rt.errors import InputError

from ._triton_support import (device_guard, jit, launch_tuned, next_power_of_2,
                              resolve_impl)
# The input checks are shared with the CUDA C++ head (native.py), which this module dispatches to.
from .seg_head_inputs import check_inputs, label_dtype
# The torch references (tests and benchmarks import them from seg_head_ref).
from .seg_head_ref import axis_mapping, axis_taps, seg_head_ref

tl = None  # bound to triton.language when a kernel is first launched (see _triton_support.jit)




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
    (cdiv(B*h*w, BLOCK_M) * cdiv(K, BLOCK_N),), the K blocks of one row block adjacent
    (a second K block finds the feature rows in L2); rows m = (b*h + i)*w + j.
    """
    pid = tl.program_id(0)
    num_n = tl.cdiv(K, BLOCK_N)
    pid_m = pid // num_n
    pid_n = pid % num_n
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


def _band_argmax_kernel(
    labels_ptr, stride_ob, stride_oy, stride_ox,
    scores_ptr, stride_sb, stride_sy, stride_sx,
    logits_ptr, stride_lb, stride_lp, stride_lk,
    band_start_ptr, band_rows_ptr,
    row_index_ptr, row_weight_ptr, col_index_ptr, col_weight_ptr,
    h, w, K, W, temperature,
    BAND_Y: tl.constexpr, TILE_X: tl.constexpr, BLOCK_K: tl.constexpr,
    WRITE_SCORES: tl.constexpr, SOFTMAX: tl.constexpr,
):
    """labels[b, y, x] = argmax_k bilinear(logits[b, :, k])(y, x) for one band of rows.

    labels [B, H, W] (uint8 or int32); scores [B, H, W] float32 (written when
    WRITE_SCORES); logits [B, h*w, K] float32. A band is up to BAND_Y consecutive output
    rows that share their upper source row i0 (so also i1 = min(i0 + 1, h - 1)):
    band_start / band_rows [n_bands] int32. Per-axis taps (module doc): row_index [H]
    int32 (i0), row_weight [H] float32 (l1), col_index [W], col_weight [W].
    Grid: (n_bands, cdiv(W, TILE_X), B).

    Per K block the program gathers the two source rows i0 and i1 at its columns' two
    neighbours and interpolates them along x once ([TILE_X, BLOCK_K] each); every row
    of the band is then one blend of those two vectors, so the four patch-logit rows
    are loaded once per band instead of once per pixel.
    """
    band = tl.program_id(0)
    pid_x = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    row_start = tl.load(band_start_ptr + band)
    num_rows = tl.load(band_rows_ptr + band)
    offs_r = tl.arange(0, BAND_Y)
    mask_r = offs_r < num_rows
    y = (row_start + offs_r).to(tl.int64)
    i0 = tl.load(row_index_ptr + row_start)  # the same for every row of the band
    i1 = tl.minimum(i0 + 1, h - 1)
    ly1 = tl.load(row_weight_ptr + y, mask=mask_r, other=0.0)

    offs_x = pid_x.to(tl.int64) * TILE_X + tl.arange(0, TILE_X)
    mask_x = offs_x < W
    j0 = tl.load(col_index_ptr + offs_x, mask=mask_x, other=0)
    j1 = tl.minimum(j0 + 1, w - 1)
    lx1 = tl.load(col_weight_ptr + offs_x, mask=mask_x, other=0.0)
    lx0 = 1.0 - lx1

    # int64: B*h*w*K can pass 2^31 for large batches.
    base = logits_ptr + b * stride_lb
    row00 = base + (i0 * w + j0).to(tl.int64)[:, None] * stride_lp
    row01 = base + (i0 * w + j1).to(tl.int64)[:, None] * stride_lp
    row10 = base + (i1 * w + j0).to(tl.int64)[:, None] * stride_lp
    row11 = base + (i1 * w + j1).to(tl.int64)[:, None] * stride_lp

    best = tl.full((BAND_Y, TILE_X), float("-inf"), tl.float32)
    best_k = tl.zeros((BAND_Y, TILE_X), dtype=tl.int32)
    sum_exp = tl.zeros((BAND_Y, TILE_X), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < K
        mask = mask_x[:, None] & mask_k[None, :]
        col = offs_k[None, :] * stride_lk
        a00 = tl.load(row00 + col, mask=mask, other=0.0)
        a01 = tl.load(row01 + col, mask=mask, other=0.0)
        a10 = tl.load(row10 + col, mask=mask, other=0.0)
        a11 = tl.load(row11 + col, mask=mask, other=0.0)
        top = lx0[:, None] * a00 + lx1[:, None] * a01      # [TILE_X, BLOCK_K], source row i0
        bottom = lx0[:, None] * a10 + lx1[:, None] * a11   # source row i1
        # l0 * top + l1 * bottom as one FMA per pixel and prompt (equal up to rounding).
        step = bottom - top
        val = top[None, :, :] + ly1[:, None, None] * step[None, :, :]
        val = tl.where(mask_k[None, None, :], val, float("-inf"))

        block_max = tl.max(val, axis=2)                    # [BAND_Y, TILE_X]
        # Lowest index reaching the block max: ties go to the lowest k, like torch.argmax.
        block_k = tl.min(tl.where(val == block_max[:, :, None], offs_k[None, None, :], 2147483647), axis=2)
        if SOFTMAX:
            new_best = tl.maximum(best, block_max)
            sum_exp = sum_exp * tl.exp(temperature * (best - new_best)) + tl.sum(
                tl.exp(temperature * (val - new_best[:, :, None])), axis=2)
        # Strict '>' keeps the earlier block's index on a tie between blocks.
        better = block_max > best
        best_k = tl.where(better, block_k.to(tl.int32), best_k)
        best = tl.where(better, block_max, best)

    mask_out = mask_r[:, None] & mask_x[None, :]
    tl.store(labels_ptr + b * stride_ob + y[:, None] * stride_oy + offs_x[None, :] * stride_ox,
             best_k.to(labels_ptr.dtype.element_ty), mask=mask_out)
    if WRITE_SCORES:
        if SOFTMAX:
            score = 1.0 / sum_exp
        else:
            score = best
        tl.store(scores_ptr + b * stride_sb + y[:, None] * stride_sy + offs_x[None, :] * stride_sx, score,
                 mask=mask_out)


# ----------------------------------------------------------------------------------------------
# Public launcher
# ----------------------------------------------------------------------------------------------

def seg_head(patch_features: torch.Tensor, text_embeds: torch.Tensor, out_size: Sequence[int], *,
             window: Optional[Sequence[float]] = None, return_scores: bool = False,
             temperature: Optional[float] = None, impl: str = "auto"
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
        impl: "auto" (for CUDA tensors Triton when it imports, else the CUDA C++
            library when it loads; torch otherwise), "triton" (CPU tensors only under
            TRITON_INTERPRET=1), "native" (the CUDA C++ library, ``kernels.native``) or "torch".

    Returns:
        (labels [B, H, W] uint8 when K <= 255 else int32, scores [B, H, W] float32 or None).
        Ties go to the lowest prompt index. All arithmetic is float32 from the given inputs.
    """
    tensors = isinstance(patch_features, torch.Tensor) and isinstance(text_embeds, torch.Tensor)
    if impl == "native" or (impl == "auto" and tensors and _native_is_next(patch_features, text_embeds)):
        from .native import seg_head_native

        return seg_head_native(patch_features, text_embeds, out_size, window=window,
                               return_scores=return_scores, temperature=temperature)
    chosen = resolve_impl(impl, (patch_features, text_embeds), "seg_head") if tensors else "torch"
    if chosen == "torch":
        return seg_head_ref(patch_features, text_embeds, out_size, window=window,
                            return_scores=return_scores, temperature=temperature)
    (height, width), window, temperature = check_inputs(patch_features, text_embeds, out_size,
                                                         window, temperature)
    if patch_features.shape[0] > 65535:
        raise InputError(f"the Triton seg head takes at most 65535 images per call (a CUDA grid limit), "
                         f"got {patch_features.shape[0]}")
    with device_guard(patch_features):
        return _seg_head_triton(patch_features, text_embeds, (height, width), window, return_scores,
                                temperature)


def _native_is_next(patch_features: torch.Tensor, text_embeds: torch.Tensor) -> bool:
    """For ``impl="auto"``: CUDA tensors, Triton unusable, and the CUDA C++ library loads."""
    if not (patch_features.is_cuda and text_embeds.is_cuda):
        return False
    if resolve_impl("auto", (patch_features, text_embeds), "seg_head") == "triton":
        return False
    from .native import native_available

    return native_available()


def _seg_head_triton(patch_features, text_embeds, out_size, window, return_scores, temperature, *,
                     half_dot: Optional[bool] = None, logits_config: Optional[int] = None,
                     band_config: Optional[int] = None):
    """Allocate the outputs and launch both stages. ``half_dot``: run stage 1's tl.dot on
    float16 / bfloat16 operands (None: whenever both inputs share a half dtype on CUDA;
    True also in the interpreter, which the tests use to run that branch on CPU).
    ``logits_config`` / ``band_config`` force one entry of the config sets (tests sweep
    them); None tunes on the GPU."""
    batch, h, w, _ = patch_features.shape
    num_prompts = text_embeds.shape[0]
    device = patch_features.device
    labels = torch.empty((batch, *out_size), dtype=label_dtype(num_prompts), device=device)
    scores = torch.empty((batch, *out_size), dtype=torch.float32, device=device) if return_scores else None
    if batch == 0:
        return labels, scores
    logits = torch.empty((batch, h * w, num_prompts), dtype=torch.float32, device=device)
    _launch_patch_logits(logits, patch_features, text_embeds, half_dot, logits_config)
    _launch_band_argmax(labels, scores, logits, (h, w), window, temperature, band_config)
    return labels, scores


def _launch_patch_logits(logits, patch_features, text_embeds, half_dot=None, config_index=None) -> bool:
    """Stage 1 into ``logits`` [B, h*w, K] float32 (any strides); returns whether the
    half-precision tl.dot branch ran."""
    batch, h, w, dim = patch_features.shape
    num_prompts = text_embeds.shape[0]
    same_half = patch_features.dtype == text_embeds.dtype and patch_features.dtype != torch.float32
    # tl.dot needs both operands in one dtype; mixed or float32 inputs go through float32.
    use_half = same_half and (patch_features.is_cuda if half_dot is None else bool(half_dot))
    configs = _logits_configs(num_prompts, cast_f32=not use_half)
    block_n = configs[0]["BLOCK_N"]
    rows = batch * h * w

    def launch(config):
        grid = (_cdiv(rows, config["BLOCK_M"]) * _cdiv(num_prompts, block_n),)
        jit(_patch_logits_kernel)[grid](
            logits, *logits.stride(),
            patch_features, *patch_features.stride(),
            text_embeds, *text_embeds.stride(),
            batch, h, w, dim, num_prompts,
            CAST_F32=not use_half, **config,
        )

    key = ("seg_head.logits", patch_features.dtype, text_embeds.dtype, rows > 4096, block_n, dim > 256)
    launch_tuned(key, configs, launch, not patch_features.is_cuda, config_index, work=rows * dim * num_prompts)
    return use_half


def _launch_band_argmax(labels, scores, logits, grid_size, window, temperature, config_index=None) -> None:
    """Stage 2: labels [B, H, W] (and scores, or None) from ``logits`` [B, h*w, K] float32."""
    batch, height, width = labels.shape
    h, w = grid_size
    num_prompts = logits.shape[2]
    taps = _band_tables(h, w, height, width, window, logits.device)
    configs = _band_configs(taps.band_y, num_prompts, width)
    score_out = scores if scores is not None else labels  # never written when WRITE_SCORES is off

    def launch(config):
        grid = (taps.num_bands, _cdiv(width, config["TILE_X"]), batch)
        jit(_band_argmax_kernel)[grid](
            labels, *labels.stride(),
            score_out, *score_out.stride(),
            logits, *logits.stride(),
            taps.band_start, taps.band_rows,
            taps.row_index, taps.row_weight, taps.col_index, taps.col_weight,
            h, w, num_prompts, width, temperature if temperature is not None else 1.0,
            BAND_Y=taps.band_y, WRITE_SCORES=scores is not None, SOFTMAX=temperature is not None,
            **config,
        )

    key = ("seg_head.bands", taps.band_y, next_power_of_2(num_prompts), width >= 256, scores is not None,
           temperature is not None)
    launch_tuned(key, configs, launch, not logits.is_cuda, config_index, work=labels.numel() * num_prompts)


def _logits_configs(num_prompts: int, cast_f32: bool):
    """Stage-1 launch configs (first: the default). BLOCK_N covers K up to 256 (float16 /
    bfloat16) so each feature row is read once; float32 operands use smaller tiles."""
    if cast_f32:
        block_n = min(max(16, next_power_of_2(num_prompts)), 64)
        shapes = [(64, 32, 4), (32, 32, 4)]
    else:
        block_n = min(max(16, next_power_of_2(num_prompts)), 256)
        shapes = [(64, 64, 4), (128, 64, 8), (64, 32, 4)]
    return [dict(BLOCK_M=m, BLOCK_N=block_n, BLOCK_D=d, num_warps=warps) for m, d, warps in shapes]


def _band_configs(band_y: int, num_prompts: int, width: int):
    """Stage-2 launch configs (first: the default): (TILE_X, BLOCK_K, warps) with at most
    16k float32 values in a [BAND_Y, TILE_X, BLOCK_K] tile; short bands or narrow outputs
    get wider tiles or larger K blocks instead; last, two one-prompt-per-step configs."""
    block_k_cap = next_power_of_2(num_prompts)
    tile_x_cap = max(16, next_power_of_2(width))
    widen = max(1, 16 // band_y)
    configs = []
    for tile_x, block_k, warps in [(64, 8, 4), (32, 16, 4), (64, 16, 8), (128, 8, 8), (16, 32, 4)]:
        tile_x = min(tile_x * widen, 256, tile_x_cap)
        block_k = min(max(block_k, 8192 // (band_y * tile_x)), 64, block_k_cap)
        config = dict(TILE_X=tile_x, BLOCK_K=block_k, num_warps=warps)
        if config not in configs:
            configs.append(config)
    # One prompt per step: no reduction across lanes, every update elementwise in registers.
    for tile_x, warps in [(64, 4), (128, 8)]:
        config = dict(TILE_X=min(tile_x * widen, 256, tile_x_cap), BLOCK_K=1, num_warps=warps)
        if config not in configs:
            configs.append(config)
    return configs


class _BandTables:
    """Per-axis taps and the band table of one (grid, output, window) on one device."""

    def __init__(self, h, w, height, width, window, device):
        offset_y, scale_y, offset_x, scale_x = axis_mapping(window, h, w, height, width)
        row_index, _, _, row_weight = axis_taps(h, height, offset_y, scale_y, "cpu")
        col_index, _, _, col_weight = axis_taps(w, width, offset_x, scale_x, "cpu")
        # Rows per band: about the number of output rows per source row (16 at patch 16),
        # as a power of two for the tile, at most 16.
        self.band_y = max(1, min(16, next_power_of_2(round(1.0 / scale_y)) if scale_y < 1 else 1))
        starts = _band_starts(row_index, self.band_y)
        self.num_bands = len(starts)
        bounds = torch.tensor(starts + [height], dtype=torch.int64)
        to_device = dict(device=device)
        self.band_start = bounds[:-1].to(torch.int32).to(**to_device)
        self.band_rows = (bounds[1:] - bounds[:-1]).to(torch.int32).to(**to_device)
        self.row_index = row_index.to(torch.int32).to(**to_device)
        self.row_weight = row_weight.to(**to_device)
        self.col_index = col_index.to(torch.int32).to(**to_device)
        self.col_weight = col_weight.to(**to_device)


def _band_starts(row_index: torch.Tensor, band_y: int):
    """First output row of each band: a new band where the source row i0 changes, or after
    band_y rows of the same i0."""
    starts = []
    previous, run = None, 0
    for y, index in enumerate(row_index.tolist()):
        if index != previous or run == band_y:
            starts.append(y)
            previous, run = index, 0
        run += 1
    return starts


@functools.lru_cache(maxsize=64)
def _band_tables(h, w, height, width, window, device) -> _BandTables:
    """_BandTables, cached: an engine calls with a few (grid, output, window) combinations.

    Building one copies small tables to the device, which a CUDA graph cannot capture: a
    warm-up call with the same shapes before capture fills the cache."""
    return _BandTables(h, w, height, width, window, device)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)
