"""The typed results of the Engine's stages, shared by the engine and the stream."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, NamedTuple, Optional, Tuple

import numpy as np
import torch

from .images import Prepared


class PreparedBatch(NamedTuple):
    """``pixels``: float32 [B, 3, H, W], normalised; ``prepared``: how each input was resized
    (empty for a tensor that was already pre-processed). Unpacks as ``pixels, prepared``."""

    pixels: torch.Tensor
    prepared: List[Prepared]


@dataclass
class ImageFeatures:
    """``patch``: [B, h, w, D], each vector L2-normalised; ``pooled``: [B, D]; float32 unless
    ``encode_image`` was asked for the tower's own dtype (``dtype=None``).

    ``prepared`` describes how each input was resized (empty for pre-processed tensors).
    """

    patch: torch.Tensor
    pooled: torch.Tensor
    prepared: List[Prepared] = field(default_factory=list)

    @property
    def grid(self) -> Tuple[int, int]:
        return self.patch.shape[1], self.patch.shape[2]


@dataclass
class Segmentation:
    """``labels``: [H, W], an index into ``prompts`` (the class names): uint8 when there are
    at most 255 classes, int64 otherwise (use ``labels.long()`` to index a tensor with them);
    ``scores``: float32 [H, W], the winning class's cosine similarity. Both on the CPU,
    or on the engine's device with ``device_output=True``.

    With ``resize="crop"`` the labels cover ``crop_box`` = (top, left, height, width) of
    the original image; otherwise the whole original image.
    """

    labels: torch.Tensor
    scores: torch.Tensor
    prompts: Tuple[str, ...]
    crop_box: Optional[Tuple[int, int, int, int]] = None
    timings_ms: Dict[str, float] = field(default_factory=dict)

    def fractions(self) -> Dict[str, float]:
        """Pixel fraction of each class."""
        counts = torch.bincount(self.labels.flatten().long(), minlength=len(self.prompts)).double()
        total = max(1, self.labels.numel())
        return {name: float(counts[i]) / total for i, name in enumerate(self.prompts)}


def class_label_dtype(num_classes: int) -> torch.dtype:
    """The dtype of ``Segmentation.labels``, defined here only: uint8 up to 255 classes, int64
    beyond. (The seg head kernel stores wider labels as int32, its own detail; the engine
    and the stream cast with this rule.)"""
    return torch.uint8 if num_classes <= 255 else torch.int64


def is_single(images) -> bool:
    """Whether a stage's input is one image (not a list, tuple or [B, H, W, C] batch): the
    call then returns one result rather than a list."""
    return not isinstance(images, (list, tuple)) and not (
        isinstance(images, (torch.Tensor, np.ndarray)) and images.ndim == 4)
