"""Segmentation metrics: a confusion matrix with IoU, mIoU and pixel accuracy, and the
label agreement between two predictions.

With ``M`` the confusion matrix (rows = target class, columns = predicted class):

    IoU_c          = M[c, c] / (sum_j M[c, j] + sum_i M[i, c] - M[c, c])
    mIoU           = mean of IoU_c over the classes whose union is non-empty
    pixel accuracy = trace(M) / sum(M)

Inputs may be numpy arrays or torch tensors (moved to the CPU); torch is never
imported here.
"""

from __future__ import annotations

import math

import numpy as np

from clippy_rt.errors import InputError

__all__ = ["ConfusionMatrix", "agreement"]


def _as_int_array(values: object, name: str) -> np.ndarray:
    # Duck-typed so that torch tensors work without importing torch.
    if hasattr(values, "detach") and hasattr(values, "cpu"):
        values = values.detach().cpu().numpy()
    if not isinstance(values, np.ndarray):
        raise TypeError(f"{name} must be a numpy array or torch tensor, got {type(values).__name__}")
    if values.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integers, got dtype {values.dtype}")
    return values


class ConfusionMatrix:
    """Accumulates a [C, C] confusion matrix over any number of label maps.

    Args:
        num_classes: C, the number of classes; labels are 0..C-1.
        ignore_index: target value to skip (VOC's 255), or None to count every pixel.
    """

    def __init__(self, num_classes: int, ignore_index: int | None = 255) -> None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)):
            raise TypeError(f"num_classes must be an int, got {type(num_classes).__name__}")
        if num_classes < 1:
            raise InputError(f"num_classes must be >= 1, got {num_classes}")
        if ignore_index is not None and (
            isinstance(ignore_index, bool) or not isinstance(ignore_index, (int, np.integer))
        ):
            raise TypeError(f"ignore_index must be an int or None, got {type(ignore_index).__name__}")
        self.num_classes = int(num_classes)
        self.ignore_index = None if ignore_index is None else int(ignore_index)
        self._matrix = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def reset(self) -> None:
        self._matrix[...] = 0

    def update(self, pred: object, target: object) -> None:
        """Adds one batch: ``pred`` and ``target`` are integer arrays of the same shape.

        Target pixels equal to ``ignore_index`` are skipped.

        Raises:
            TypeError: not integer numpy arrays / torch tensors.
            InputError: shapes differ; a prediction outside [0, C); a target outside
                [0, C) that is not ``ignore_index``.
        """
        pred_array = _as_int_array(pred, "pred")
        target_array = _as_int_array(target, "target")
        if pred_array.shape != target_array.shape:
            raise InputError(
                f"pred and target shapes differ: {tuple(pred_array.shape)} vs {tuple(target_array.shape)}"
            )
        classes = self.num_classes
        pred_flat = pred_array.ravel().astype(np.int64, copy=False)
        target_flat = target_array.ravel().astype(np.int64, copy=False)
        if pred_flat.size and (pred_flat.min() < 0 or pred_flat.max() >= classes):
            raise InputError(
                f"pred values must lie in [0, {classes}), got min {pred_flat.min()} max {pred_flat.max()}"
            )
        if self.ignore_index is not None:
            keep = target_flat != self.ignore_index
            pred_flat, target_flat = pred_flat[keep], target_flat[keep]
        if target_flat.size and (target_flat.min() < 0 or target_flat.max() >= classes):
            bad = target_flat[(target_flat < 0) | (target_flat >= classes)]
            raise InputError(
                f"target values must lie in [0, {classes}) or equal ignore_index "
                f"{self.ignore_index}; found {np.unique(bad)[:8].tolist()}"
            )
        counts = np.bincount(target_flat * classes + pred_flat, minlength=classes * classes)
        self._matrix += counts.reshape(classes, classes)

    @property
    def matrix(self) -> np.ndarray:
        """A copy of the int64 [C, C] counts: ``matrix[t, p]`` = pixels of target t predicted p."""
        return self._matrix.copy()

    @property
    def total(self) -> int:
        """Number of pixels counted (ignored ones excluded)."""
        return int(self._matrix.sum())

    def iou(self) -> np.ndarray:
        """Per-class IoU, float64 [C]; NaN for a class absent from both target and prediction."""
        true_positive = np.diag(self._matrix).astype(np.float64)
        union = self._matrix.sum(axis=0) + self._matrix.sum(axis=1) - true_positive
        result = np.full(self.num_classes, np.nan)
        present = union > 0
        result[present] = true_positive[present] / union[present]
        return result

    def miou(self) -> float:
        """Mean IoU over the classes with a non-empty union; NaN when nothing was counted."""
        per_class = self.iou()
        present = ~np.isnan(per_class)
        return float(per_class[present].mean()) if present.any() else math.nan

    def iou_with_eps(self) -> np.ndarray:
        """Per-class IoU as the reference evaluation computes it, float64 [C]:
        ``M[c, c] / (col_c + row_c - M[c, c] + eps)`` with float32's eps, so a class absent
        from both target and prediction scores 0 (not NaN) and pulls the mean down."""
        true_positive = np.diag(self._matrix).astype(np.float64)
        union = self._matrix.sum(axis=0) + self._matrix.sum(axis=1) - true_positive
        return true_positive / (union + np.finfo(np.float32).eps)

    def pixel_accuracy(self) -> float:
        """Fraction of counted pixels predicted correctly; NaN when nothing was counted."""
        total = self._matrix.sum()
        return float(np.trace(self._matrix) / total) if total else math.nan


def agreement(a: object, b: object, ignore: object | None = None) -> float:
    """Fraction of positions where two label maps are equal.

    ``a`` and ``b`` are integer arrays (numpy or torch) of one shape; ``ignore``, if
    given, is a boolean array of that shape marking positions left out (e.g. target
    pixels labelled 255). Returns NaN when no position is left to compare.

    Raises:
        TypeError: non-integer labels or a non-boolean ``ignore``.
        InputError: shapes differ.
    """
    first = _as_int_array(a, "a")
    second = _as_int_array(b, "b")
    if first.shape != second.shape:
        raise InputError(f"label maps differ in shape: {tuple(first.shape)} vs {tuple(second.shape)}")
    equal = first == second
    if ignore is not None:
        if hasattr(ignore, "detach") and hasattr(ignore, "cpu"):
            ignore = ignore.detach().cpu().numpy()
        if not isinstance(ignore, np.ndarray) or ignore.dtype != np.bool_:
            raise TypeError("ignore must be a boolean numpy array or torch tensor")
        if ignore.shape != first.shape:
            raise InputError(
                f"ignore mask shape {tuple(ignore.shape)} differs from the labels' {tuple(first.shape)}"
            )
        equal = equal[~ignore]
    return float(equal.mean()) if equal.size else math.nan
