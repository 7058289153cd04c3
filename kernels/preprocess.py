"""Camera frames to model input: uint8 HWC (RGB or BGR) -> resized, normalised NCHW, in one pass.

For frames [B, Hin, Win, 3] uint8 and output (H, W):

    out[b, c, y, x] = (sum_i sum_j wy[y, i] * wx[x, j] * frame[b, iy[y, i], ix[x, j], c'] / 255
                       - mean[c]) / std[c]

with c' = c for RGB input and 2 - c for BGR. The taps (iy, wy) and (ix, wx) are those of
``F.interpolate(mode="bilinear", align_corners=False, antialias=...)``: with
``antialias`` and a shrinking axis (scale s = in / out > 1), a triangle filter of
support s centred at s * (i + 0.5), weights normalised to sum 1 (the filter PIL's
BILINEAR uses); otherwise two-tap bilinear with F.interpolate's edge clamping.

Triton design: the per-axis taps are small tables computed in float64 and rounded once
([H, taps_y] and [W, taps_x], cached per frame size on the frames' device); one kernel
gives each program a TILE_Y x TILE_X tile of output pixels of one image, loads each row
tap once per tile row and each column tap once per tile column, accumulates the
separable weighted sum of the uint8 neighbours in float32 for the three channels,
applies the normalisation and writes the three NCHW planes as tiles contiguous along x
in the output dtype. The bytes that must move are the frame pixels the taps touch
(each read once from DRAM; neighbouring tiles share rows in L2) and the output. Tile
shape and warps come from a small config set, timed once per shape class on a GPU.
"""

from __future__ import annotations

import functools
import math
from typing import Sequence, Tuple

import torch
import torch.nn.functional as F

from clippy_rt.errors import InputError

from ._triton_support import check_out_size, device_guard, jit, launch_tuned, resolve_impl

tl = None  # bound to triton.language when a kernel is first launched (see _triton_support.jit)

OUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


# ----------------------------------------------------------------------------------------------
# Triton kernel
# ----------------------------------------------------------------------------------------------

def _resize_normalise_kernel(
    out_ptr, stride_ob, stride_oc, stride_oy, stride_ox,
    frames_ptr, stride_fb, stride_fy, stride_fx, stride_fc,
    index_y_ptr, weight_y_ptr, index_x_ptr, weight_x_ptr,
    H, W, taps_y, taps_x,
    scale_0, scale_1, scale_2, bias_0, bias_1, bias_2,
    TILE_Y: tl.constexpr, TILE_X: tl.constexpr, BGR: tl.constexpr,
):
    """out[b, c, y, x] = scale_c * sum_i sum_j wy[y, i] wx[x, j] frame[b, iy[y, i], ix[x, j], c'] + bias_c.

    out [B, 3, H, W] (float32/16, bfloat16); frames [B, Hin, Win, 3] uint8; index_y /
    weight_y [H, taps_y] int32 / float32 (contiguous), index_x / weight_x [W, taps_x].
    scale_c = 1 / (255 std_c), bias_c = -mean_c / std_c. Grid: (cdiv(W, TILE_X),
    cdiv(H, TILE_Y), B); a program computes a TILE_Y x TILE_X tile of all three channels.
    """
    pid_x = tl.program_id(0)
    pid_y = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    offs_y = pid_y * TILE_Y + tl.arange(0, TILE_Y)
    offs_x = pid_x * TILE_X + tl.arange(0, TILE_X)
    mask_y = offs_y < H
    mask_x = offs_x < W
    mask = mask_y[:, None] & mask_x[None, :]
    if BGR:
        chan_r = 2 * stride_fc
        chan_b = 0
    else:
        chan_r = 0
        chan_b = 2 * stride_fc
    frame = frames_ptr + b * stride_fb

    acc_r = tl.zeros((TILE_Y, TILE_X), dtype=tl.float32)
    acc_g = tl.zeros((TILE_Y, TILE_X), dtype=tl.float32)
    acc_b = tl.zeros((TILE_Y, TILE_X), dtype=tl.float32)
    for i in range(0, taps_y):
        # Row taps once per tile row, column taps once per tile column (not per pixel).
        iy = tl.load(index_y_ptr + offs_y * taps_y + i, mask=mask_y, other=0)
        wy = tl.load(weight_y_ptr + offs_y * taps_y + i, mask=mask_y, other=0.0)
        row = frame + iy.to(tl.int64)[:, None] * stride_fy
        row_r = tl.zeros((TILE_Y, TILE_X), dtype=tl.float32)
        row_g = tl.zeros((TILE_Y, TILE_X), dtype=tl.float32)
        row_b = tl.zeros((TILE_Y, TILE_X), dtype=tl.float32)
        for j in range(0, taps_x):
            ix = tl.load(index_x_ptr + offs_x * taps_x + j, mask=mask_x, other=0)
            wx = tl.load(weight_x_ptr + offs_x * taps_x + j, mask=mask_x, other=0.0)[None, :]
            pixel = row + ix.to(tl.int64)[None, :] * stride_fx
            row_r += wx * tl.load(pixel + chan_r, mask=mask, other=0).to(tl.float32)
            row_g += wx * tl.load(pixel + stride_fc, mask=mask, other=0).to(tl.float32)
            row_b += wx * tl.load(pixel + chan_b, mask=mask, other=0).to(tl.float32)
        acc_r += wy[:, None] * row_r
        acc_g += wy[:, None] * row_g
        acc_b += wy[:, None] * row_b

    out = out_ptr + b * stride_ob + offs_y.to(tl.int64)[:, None] * stride_oy + offs_x[None, :] * stride_ox
    element = out_ptr.dtype.element_ty
    tl.store(out, (acc_r * scale_0 + bias_0).to(element), mask=mask)
    tl.store(out + stride_oc, (acc_g * scale_1 + bias_1).to(element), mask=mask)
    tl.store(out + 2 * stride_oc, (acc_b * scale_2 + bias_2).to(element), mask=mask)


# Launch configs (TILE_Y, TILE_X, warps), the first the default; tuned per shape class on a GPU.
RESIZE_CONFIGS = [dict(TILE_Y=8, TILE_X=64, num_warps=4), dict(TILE_Y=4, TILE_X=128, num_warps=4),
                  dict(TILE_Y=16, TILE_X=64, num_warps=8), dict(TILE_Y=8, TILE_X=32, num_warps=2)]


# ----------------------------------------------------------------------------------------------
# Validation, taps and reference
# ----------------------------------------------------------------------------------------------

def _check_inputs(frames, out_size, mean, std, out_dtype):
    if not isinstance(frames, torch.Tensor):
        raise TypeError(f"frames must be a torch.Tensor [B, H, W, 3] uint8, got {type(frames).__name__}")
    if frames.dtype != torch.uint8:
        raise TypeError(f"frames must be uint8 (HWC bytes), got {frames.dtype}")
    if frames.ndim not in (3, 4) or frames.shape[-1] != 3:
        raise InputError(f"frames must be [B, H, W, 3] or [H, W, 3], got shape {tuple(frames.shape)}")
    if frames.shape[-3] < 1 or frames.shape[-2] < 1:
        raise InputError(f"frames need H, W >= 1, got shape {tuple(frames.shape)}")
    height, width = check_out_size(out_size)
    mean = _three_floats(mean, "mean")
    std = _three_floats(std, "std")
    if min(std) <= 0:
        raise InputError(f"std must be positive, got {std}")
    if out_dtype not in OUT_DTYPES:
        raise TypeError(f"out_dtype must be one of {OUT_DTYPES}, got {out_dtype!r}")
    return (int(height), int(width)), mean, std


def _three_floats(values, name) -> Tuple[float, float, float]:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().flatten().tolist()
    try:
        floats = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be 3 numbers (one per channel), got {values!r}") from None
    if len(floats) != 3 or not all(math.isfinite(v) for v in floats):
        raise InputError(f"{name} must be 3 finite numbers (one per channel), got {values!r}")
    return floats


def resample_taps(in_size: int, out_size: int, antialias: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """(index [out, taps] int32, weight [out, taps] float32) on the CPU: one axis as
    F.interpolate (bilinear, align_corners=False, ``antialias``) samples it; a row's unused
    taps have weight 0. Computed in float64, rounded once."""
    scale = in_size / out_size
    dst = torch.arange(out_size, dtype=torch.float64)
    if antialias:
        support = scale if scale >= 1.0 else 1.0
        inv_scale = 1.0 / scale if scale >= 1.0 else 1.0
        center = scale * (dst + 0.5)
        start = (center - support + 0.5).floor().clamp_min(0)
        stop = (center + support + 0.5).floor().clamp_max(in_size)
        # ceil(support) * 2 + 1 bounds the taps; keep only as many as some output uses
        # (2 when enlarging), since the kernel loops over every column.
        taps = int((stop - start).max().item())
        index = start[:, None] + torch.arange(taps, dtype=torch.float64)
        weight = (1.0 - ((index - center[:, None] + 0.5) * inv_scale).abs()).clamp_min(0.0)
        weight = torch.where(index < stop[:, None], weight, torch.zeros_like(weight))
        weight = weight / weight.sum(dim=1, keepdim=True)
        index = index.clamp_max(in_size - 1)
    else:
        src = (scale * (dst + 0.5) - 0.5).clamp_min(0.0)
        first = src.floor().clamp_max(in_size - 1)
        second = (first + 1).clamp_max(in_size - 1)
        frac = (src - first).clamp(0.0, 1.0)
        index = torch.stack([first, second], dim=1)
        weight = torch.stack([1.0 - frac, frac], dim=1)
    return index.to(torch.int32).contiguous(), weight.to(torch.float32).contiguous()


@functools.lru_cache(maxsize=64)
def _device_taps(in_size: int, out_size: int, antialias: bool, device: torch.device):
    """resample_taps on ``device``, cached: a camera's frame size rarely changes."""
    index, weight = resample_taps(in_size, out_size, antialias)
    return index.to(device), weight.to(device)


def preprocess_ref(frames: torch.Tensor, out_size: Sequence[int], mean: Sequence[float], std: Sequence[float], *,
                   bgr: bool = False, antialias: bool = True, out_dtype: torch.dtype = torch.float32,
                   impl: str = "torch") -> torch.Tensor:
    """Pure-torch :func:`preprocess` (``impl`` is ignored): F.interpolate on float64 pixels.

    float64 because F.interpolate computes its source coordinates in the pixels' dtype:
    in float32, scale * (x + 0.5) - 0.5 is off by up to an ulp of the coordinate (about
    6e-5 pixel near x = 1000), which moves outputs by up to 3.6e-4 after normalisation
    (1920 -> 448 columns); in float64 the result is within 1.1e-7 of the exact resampling,
    as the Triton kernel's taps (computed in float64, rounded once) are.
    """
    (height, width), mean, std = _check_inputs(frames, out_size, mean, std, out_dtype)
    batch = frames if frames.ndim == 4 else frames[None]
    pixels = batch.permute(0, 3, 1, 2).double()
    if bgr:
        pixels = pixels.flip(1)
    if pixels.shape[0] > 0:
        pixels = F.interpolate(pixels, size=(height, width), mode="bilinear", align_corners=False,
                               antialias=antialias)
    else:
        pixels = pixels.new_empty((0, 3, height, width))
    mean_t = torch.tensor(mean, dtype=torch.float64, device=pixels.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float64, device=pixels.device).view(1, 3, 1, 1)
    return ((pixels / 255.0 - mean_t) / std_t).to(out_dtype)


# ----------------------------------------------------------------------------------------------
# Public launcher
# ----------------------------------------------------------------------------------------------

def preprocess(frames: torch.Tensor, out_size: Sequence[int], mean: Sequence[float], std: Sequence[float], *,
               bgr: bool = False, antialias: bool = True, out_dtype: torch.dtype = torch.float32,
               impl: str = "auto") -> torch.Tensor:
    """uint8 frames [B, Hin, Win, 3] (or one [Hin, Win, 3], treated as B = 1) -> [B, 3, H, W].

    Bilinear resize (antialiased when shrinking if ``antialias``, as F.interpolate and
    close to PIL's BILINEAR), then (x / 255 - mean) / std per channel, in ``out_dtype``.
    ``bgr``: the frames are BGR (OpenCV); the output is RGB either way. ``impl``:
    "auto" (Triton for CUDA tensors when it imports, torch otherwise), "triton" (CPU only
    under TRITON_INTERPRET=1), "torch".
    """
    chosen = resolve_impl(impl, (frames,), "preprocess") if isinstance(frames, torch.Tensor) else "torch"
    if chosen == "torch":
        return preprocess_ref(frames, out_size, mean, std, bgr=bgr, antialias=antialias, out_dtype=out_dtype)
    (height, width), mean, std = _check_inputs(frames, out_size, mean, std, out_dtype)
    batch = frames if frames.ndim == 4 else frames[None]
    out = torch.empty((batch.shape[0], 3, height, width), dtype=out_dtype, device=frames.device)
    if batch.shape[0] == 0:
        return out
    index_y, weight_y = _device_taps(batch.shape[1], height, bool(antialias), frames.device)
    index_x, weight_x = _device_taps(batch.shape[2], width, bool(antialias), frames.device)
    scales = [1.0 / (255.0 * s) for s in std]
    biases = [-m / s for m, s in zip(mean, std)]
    if batch.shape[0] > 65535:
        raise InputError(f"the Triton preprocess takes at most 65535 frames per call (a CUDA grid limit), "
                         f"got {batch.shape[0]}")
    _launch_resize(out, batch, (index_y, weight_y, index_x, weight_x), scales, biases, bool(bgr))
    return out


def _launch_resize(out, batch, taps, scales, biases, bgr, config_index=None) -> None:
    """Launch the resize kernel with a tuned config (``config_index`` forces one; tests)."""
    index_y, weight_y, index_x, weight_x = taps
    height, width = out.shape[2:]

    def launch(config):
        grid = (-(-width // config["TILE_X"]), -(-height // config["TILE_Y"]), batch.shape[0])
        jit(_resize_normalise_kernel)[grid](
            out, *out.stride(),
            batch, *batch.stride(),
            index_y, weight_y, index_x, weight_x,
            height, width, index_y.shape[1], index_x.shape[1],
            *scales, *biases,
            BGR=bgr, **config,
        )

    key = ("preprocess", out.dtype, index_y.shape[1] > 2 or index_x.shape[1] > 2, width >= 512)
    with device_guard(out):
        launch_tuned(key, RESIZE_CONFIGS, launch, not out.is_cuda, config_index, work=out.numel())
