"""The typed results of the Engine's stages, shared by the engine and the stream."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch

from .errors import InputError
from .images import Prepared

# The class ``Segmentation.select`` gives the pixels no kept class takes.
UNKNOWN = "unknown"


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

    def numpy(self) -> "SegmentationArrays":
        """``labels`` and ``scores`` as numpy arrays on the CPU (same dtypes: uint8 or int64
        labels, float32 scores), ready for OpenCV; unpacks as ``labels, scores``."""
        return SegmentationArrays(self.labels.detach().cpu().numpy(), self.scores.detach().cpu().numpy())

    def to_masks(self) -> np.ndarray:
        """One binary mask per class: bool [len(prompts), H, W], mask i where ``labels == i``."""
        labels = self.labels.detach().cpu().numpy()
        return labels[None, :, :] == np.arange(len(self.prompts)).reshape(-1, 1, 1)

    def instances(self) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One instance per class present: (boxes float32 [N, 4] as x_min, y_min, x_max, y_max
        with the max inclusive, as supervision's ``mask_to_xyxy``; masks bool [N, H, W];
        class ids int64 [N]), in class order."""
        masks = self.to_masks()
        present = np.flatnonzero(masks.reshape(len(self.prompts), -1).any(axis=1))
        boxes = np.zeros((len(present), 4), dtype=np.float32)
        for row, index in enumerate(present):
            ys, xs = np.nonzero(masks[index])
            boxes[row] = (xs.min(), ys.min(), xs.max(), ys.max())
        return boxes, masks[present], present.astype(np.int64)

    def to_detections(self):
        """``supervision.Detections`` of ``instances()``, with ``data["class_name"]``; needs
        supervision (``pip install supervision``), imported here only."""
        try:
            import supervision
        except ImportError as exc:
            raise ImportError(f"Segmentation.to_detections needs supervision: pip install supervision ({exc})") from exc
        boxes, masks, class_ids = self.instances()
        names = np.array([self.prompts[i] for i in class_ids], dtype=object)
        return supervision.Detections(xyxy=boxes, mask=masks, class_id=class_ids, data={"class_name": names})

    def select(self, classes: Optional[Sequence[str]] = None, min_score: Optional[float] = None,
               unknown: str = UNKNOWN) -> "Segmentation":
        """A new Segmentation over ``classes`` (names from ``prompts``, in the order given;
        default all) plus a last class ``unknown``: it takes every pixel won by a class left
        out and, with ``min_score``, every pixel whose score is below it.

        The classes still compete as before; only the outputs change. ``scores`` stay the
        winning class's similarity. Raises ``InputError`` for a name not among ``prompts``.
        """
        names = list(self.prompts) if classes is None else list(classes)
        missing = [name for name in names if name not in self.prompts]
        if missing:
            raise InputError(f"unknown class {', '.join(map(repr, missing))}: the classes are "
                             f"{', '.join(self.prompts)}")
        if len(set(names)) != len(names):
            raise InputError(f"a class is named twice in {names}")
        if unknown in names:
            raise InputError(f"{unknown!r} names the pixels no kept class takes; it cannot be a kept class too")
        if min_score is not None and not (isinstance(min_score, (int, float)) and not isinstance(min_score, bool)
                                          and math.isfinite(min_score)):
            raise InputError(f"min_score must be a finite number, got {min_score!r}")
        # old class index -> new index; the left-out classes go to the unknown class.
        mapping = torch.full((len(self.prompts),), len(names), dtype=torch.int64)
        for new, name in enumerate(names):
            mapping[self.prompts.index(name)] = new
        labels = mapping.to(self.labels.device)[self.labels.long()]
        if min_score is not None:
            labels = torch.where(self.scores < min_score, torch.full_like(labels, len(names)), labels)
        return Segmentation(labels.to(class_label_dtype(len(names) + 1)), self.scores,
                            tuple(names) + (unknown,), self.crop_box, dict(self.timings_ms))


class SegmentationArrays(NamedTuple):
    """``Segmentation.numpy()``: labels [H, W] (uint8 or int64) and scores float32 [H, W]."""

    labels: np.ndarray
    scores: np.ndarray


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
