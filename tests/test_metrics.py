import math

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from clippy_rt.errors import InputError
from clippy_rt.metrics import ConfusionMatrix, agreement


def _reference_matrix(pred, target, num_classes, ignore_index):
    """Counts pixel by pixel, independently of the bincount path."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    for p, t in zip(pred.ravel().tolist(), target.ravel().tolist()):
        if t != ignore_index:
            matrix[t, p] += 1
    return matrix


def test_hand_computed_two_classes():
    pred = np.array([[0, 1], [1, 1]])
    target = np.array([[0, 1], [0, 1]])
    metric = ConfusionMatrix(2)
    metric.update(pred, target)
    np.testing.assert_array_equal(metric.matrix, [[1, 1], [0, 2]])
    # class 0: tp 1, union 2 + 1 - 1 = 2; class 1: tp 2, union 2 + 3 - 2 = 3
    assert_close(metric.iou(), np.array([1 / 2, 2 / 3]))
    assert metric.miou() == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert metric.pixel_accuracy() == pytest.approx(3 / 4)
    assert metric.total == 4


def test_hand_computed_three_classes_with_ignore():
    target = np.array([[0, 0, 1, 1, 255], [2, 2, 2, 255, 0]], dtype=np.uint8)
    pred = np.array([[0, 1, 1, 1, 2], [2, 0, 2, 1, 0]], dtype=np.int64)
    metric = ConfusionMatrix(3, ignore_index=255)
    metric.update(pred, target)
    expected = np.array([[2, 1, 0], [0, 2, 0], [1, 0, 2]])
    np.testing.assert_array_equal(metric.matrix, expected)
    # IoU: c0 2 / (3 + 3 - 2), c1 2 / (2 + 3 - 2), c2 2 / (3 + 2 - 2)
    assert_close(metric.iou(), np.array([2 / 4, 2 / 3, 2 / 3]))
    assert metric.pixel_accuracy() == pytest.approx(6 / 8)


def test_absent_class_is_nan_and_excluded_from_mean():
    metric = ConfusionMatrix(4)
    metric.update(np.array([0, 0, 1, 1, 3]), np.array([0, 1, 1, 1, 0]))
    iou = metric.iou()
    # class 2: absent from target and prediction -> NaN
    # class 3: predicted once, never in target -> IoU 0, counted in the mean
    assert math.isnan(iou[2])
    assert_close(iou[[0, 1, 3]], np.array([1 / 3, 2 / 3, 0.0]))
    assert metric.miou() == pytest.approx((1 / 3 + 2 / 3 + 0.0) / 3)


def test_ignore_index_inside_the_class_range():
    # Ignoring class 0 (e.g. scoring the objects only) skips those target pixels.
    metric = ConfusionMatrix(3, ignore_index=0)
    metric.update(np.array([1, 2, 2, 1]), np.array([0, 0, 2, 1]))
    np.testing.assert_array_equal(metric.matrix, [[0, 0, 0], [0, 1, 0], [0, 0, 1]])


def test_no_ignore_index_counts_every_pixel():
    metric = ConfusionMatrix(3, ignore_index=None)
    metric.update(np.array([0, 1]), np.array([0, 2]))
    assert metric.total == 2
    with pytest.raises(InputError):
        metric.update(np.array([0]), np.array([255]))


def test_matches_pixelwise_reference_and_accumulates():
    rng = np.random.default_rng(3)
    classes = 7
    pairs = []
    for shape in [(5, 9), (3, 4, 6), (17,)]:
        target = rng.integers(0, classes, size=shape)
        target[rng.random(shape) < 0.1] = 255
        pairs.append((rng.integers(0, classes, size=shape), target))
    metric = ConfusionMatrix(classes)
    for pred, target in pairs:
        metric.update(pred, target)
    expected = sum(_reference_matrix(p, t, classes, 255) for p, t in pairs)
    np.testing.assert_array_equal(metric.matrix, expected)
    assert metric.matrix.dtype == np.int64
    tp = np.diag(expected).astype(np.float64)
    assert_close(metric.iou(), tp / (expected.sum(0) + expected.sum(1) - tp))


def test_torch_inputs():
    pred = torch.tensor([[0, 1], [2, 2]])
    target = torch.tensor([[0, 2], [2, 255]], dtype=torch.uint8)
    metric = ConfusionMatrix(3)
    metric.update(pred, target)
    np.testing.assert_array_equal(metric.matrix, [[1, 0, 0], [0, 0, 0], [0, 1, 1]])


def test_matrix_is_a_copy_and_reset():
    metric = ConfusionMatrix(2)
    metric.update(np.array([1]), np.array([1]))
    metric.matrix[1, 1] = 100
    assert metric.matrix[1, 1] == 1
    metric.reset()
    assert metric.total == 0
    assert math.isnan(metric.miou())
    assert math.isnan(metric.pixel_accuracy())


@pytest.mark.parametrize(
    "pred, target",
    [
        (np.zeros((2, 3), dtype=np.int64), np.zeros((3, 2), dtype=np.int64)),  # shapes differ
        (np.array([3]), np.array([0])),  # pred == num_classes
        (np.array([-1]), np.array([0])),  # negative pred
        (np.array([0]), np.array([3])),  # target out of range, not ignore
        (np.array([0, 0]), np.array([-1, 0])),  # negative target
        (np.array([255]), np.array([255])),  # pred 255 is not ignored
    ],
)
def test_update_rejects_bad_labels(pred, target):
    metric = ConfusionMatrix(3)
    with pytest.raises(InputError):
        metric.update(pred, target)
    assert metric.total == 0


def test_update_rejects_non_integer_inputs():
    metric = ConfusionMatrix(3)
    with pytest.raises(TypeError):
        metric.update(np.array([0.0]), np.array([0]))
    with pytest.raises(TypeError):
        metric.update([0, 1], [0, 1])
    with pytest.raises(InputError):
        ConfusionMatrix(0)
    with pytest.raises(TypeError):
        ConfusionMatrix(3, ignore_index=2.5)


def test_agreement():
    a = np.array([[0, 1, 2], [3, 3, 3]])
    b = np.array([[0, 2, 2], [3, 0, 3]])
    assert agreement(a, b) == pytest.approx(4 / 6)
    ignore = np.array([[False, True, False], [False, True, False]])
    assert agreement(a, b, ignore) == pytest.approx(1.0)
    assert agreement(torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(~ignore)) == pytest.approx(0.0)
    assert math.isnan(agreement(a, b, np.ones_like(ignore)))
    with pytest.raises(InputError):
        agreement(a, b[:, :2])
    with pytest.raises(InputError):
        agreement(a, b, ignore[:, :2])
    with pytest.raises(TypeError):
        agreement(a, b, ignore.astype(np.uint8))
