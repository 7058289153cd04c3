"""Pure-torch references of the seg head (``clippy_rt.kernels.seg_head``): the fused torch
path the CPU runs, and docs/MODEL.md's reference procedure. Same sampling as the kernels:
source = offset + scale * (dst + 0.5) - 0.5, clamped at the borders (F.interpolate's
bilinear, align_corners=False), over the letterbox window when one is given.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .seg_head_inputs import Window, check_inputs, label_dtype

# Above this many elements of [B, K_chunk, H, W] float32 the torch reference walks K in chunks.
_REF_CHUNK_ELEMENTS = 1 << 25


def axis_mapping(window: Optional[Window], h: int, w: int, height: int, width: int):
    """(offset_y, scale_y, offset_x, scale_x): source = offset + scale*(dst + 0.5) - 0.5."""
    y0, x0, y1, x1 = window if window is not None else (0.0, 0.0, 1.0, 1.0)
    # Computed in float64 and rounded once: for the full window this is float32(h / H),
    # the scale F.interpolate uses.
    return y0 * h, (y1 - y0) * h / height, x0 * w, (x1 - x0) * w / width


def patch_logits_ref(patch_features: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
    """Patch logits [B, K, h, w] float32 = P . T^T, computed in float32.

    One [B*h*w, D] x [D, K] matmul; the result is a channels-last view (K innermost),
    which F.interpolate keeps, so the max over K later reads contiguous memory.
    """
    batch, h, w, dim = patch_features.shape
    logits = patch_features.float().reshape(batch * h * w, dim) @ text_embeds.float().t()
    return logits.reshape(batch, h, w, -1).permute(0, 3, 1, 2)


def axis_taps(size_in: int, size_out: int, offset: float, scale: float, device):
    """Neighbour indices (i0, i1) [size_out] int64 and weights (l0, l1) float32 of one axis."""
    dst = torch.arange(size_out, device=device, dtype=torch.float32)
    src = (torch.as_tensor(offset, dtype=torch.float32) + torch.as_tensor(scale, dtype=torch.float32) * (dst + 0.5)
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
    offset_y, scale_y, offset_x, scale_x = axis_mapping(window, h, w, height, width)
    y0, y1, wy0, wy1 = axis_taps(h, height, offset_y, scale_y, patch_logits.device)
    x0, x1, wx0, wx1 = axis_taps(w, width, offset_x, scale_x, patch_logits.device)
    rows_top = patch_logits[:, :, y0, :]
    rows_bottom = patch_logits[:, :, y1, :]
    top = wx0 * rows_top[..., x0] + wx1 * rows_top[..., x1]
    bottom = wx0 * rows_bottom[..., x0] + wx1 * rows_bottom[..., x1]
    return wy0[:, None] * top + wy1[:, None] * bottom


def seg_head_ref(patch_features: torch.Tensor, text_embeds: torch.Tensor, out_size: Sequence[int], *,
                 window: Optional[Sequence[float]] = None, return_scores: bool = False,
                 temperature: Optional[float] = None, impl: str = "torch"
                 ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Pure-torch segmentation head; same contract as :func:`seg_head` (``impl`` is ignored).

    Patch logits in float32 (matmul), upsampled with F.interpolate (or the explicit
    gather for a window), then max / argmax over K. Large outputs walk K in chunks with a
    running max (and running sum of exponentials) so [B, K, H, W] is held one chunk at a time.
    """
    (height, width), window, temperature = check_inputs(patch_features, text_embeds, out_size,
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
    (height, width), _, _ = check_inputs(patch_features, text_embeds, out_size, None, None)
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
