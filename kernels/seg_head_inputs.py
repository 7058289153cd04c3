"""Input checks and the label dtype of the segmentation head, shared by every implementation
(the Triton kernels and torch reference in ``seg_head``, the CUDA C++ library in ``native``)."""

from __future__ import annotations

import math
import numbers
from typing import Optional, Tuple

import torch

from clippy_rt.errors import InputError

from ._triton_support import check_out_size

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
Window = Tuple[float, float, float, float]


def check_inputs(patch_features, text_embeds, out_size, window, temperature
                  ) -> Tuple[Tuple[int, int], Optional[Window], Optional[float]]:
    if not isinstance(patch_features, torch.Tensor):
        raise TypeError(f"patch_features must be a torch.Tensor [B, h, w, D], got {type(patch_features).__name__}")
    if not isinstance(text_embeds, torch.Tensor):
        raise TypeError(f"text_embeds must be a torch.Tensor [K, D], got {type(text_embeds).__name__}")
    if patch_features.ndim != 4:
        raise InputError(f"patch_features must be [B, h, w, D] (4 dims), got shape {tuple(patch_features.shape)}")
    if text_embeds.ndim != 2:
        raise InputError(f"text_embeds must be [K, D] (2 dims), got shape {tuple(text_embeds.shape)}")
    for name, tensor in (("patch_features", patch_features), ("text_embeds", text_embeds)):
        if tensor.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{name} must be float16, bfloat16 or float32, got {tensor.dtype}")
    _, h, w, dim = patch_features.shape
    if h < 1 or w < 1 or dim < 1:
        raise InputError(f"patch_features needs h, w, D >= 1, got shape {tuple(patch_features.shape)}")
    if text_embeds.shape[0] < 1:
        raise InputError("text_embeds holds no prompt (K = 0); give at least one")
    if text_embeds.shape[1] != dim:
        raise InputError(f"text_embeds width {text_embeds.shape[1]} does not match the patch feature "
                         f"width D = {dim}")
    if text_embeds.device != patch_features.device:
        raise InputError(f"patch_features ({patch_features.device}) and text_embeds ({text_embeds.device}) "
                         "must be on the same device")
    size = check_out_size(out_size)
    return size, _check_window(window), _check_temperature(temperature)


def _check_window(window) -> Optional[Window]:
    if window is None:
        return None
    try:
        values = tuple(float(v) for v in window)
    except (TypeError, ValueError):
        raise InputError(f"window must be (y0, x0, y1, x1) numbers in [0, 1], got {window!r}") from None
    if len(values) != 4:
        raise InputError(f"window must have 4 values (y0, x0, y1, x1), got {len(values)}: {window!r}")
    y0, x0, y1, x1 = values
    if not all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in values):
        raise InputError(f"window values must lie in [0, 1], got {window!r}")
    if not (y1 > y0 and x1 > x0):
        raise InputError(f"window needs y1 > y0 and x1 > x0, got (y0, x0, y1, x1) = {window!r}")
    return values


def _check_temperature(temperature) -> Optional[float]:
    if temperature is None:
        return None
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real) \
            or not math.isfinite(temperature) or temperature <= 0:
        raise InputError(f"temperature must be a positive finite number, got {temperature!r}")
    return float(temperature)


def label_dtype(num_prompts: int) -> torch.dtype:
    """uint8 when every label fits (K <= 255; 255 stays free for "ignore"), int32 otherwise."""
    return torch.uint8 if num_prompts <= 255 else torch.int32
