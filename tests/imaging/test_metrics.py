import numpy as np
import pytest

from scanedge.imaging.metrics import Overlap, dice, overlap


def test_dice_of_known_masks():
    a = np.zeros((10, 10), np.uint8)
    b = np.zeros((10, 10), np.uint8)
    a[0:4, 0:5] = 1  # 20 pixels
    b[2:6, 0:5] = 1  # 20 pixels, 10 shared
    assert overlap(a, b) == Overlap(10, 20, 20)
    assert dice(a, b) == pytest.approx(0.5)
    assert dice(a, a) == 1.0
    assert dice(a, np.roll(a, 5, axis=0)) == 0.0


def test_two_empty_masks_agree_perfectly():
    empty = np.zeros((8, 8), bool)
    assert dice(empty, empty) == 1.0
    assert dice(empty, np.ones((8, 8), bool)) == 0.0


def test_any_non_zero_label_is_foreground():
    labels = np.array([[0, 1, 2], [3, 0, 255]], np.uint8)
    assert dice(labels, labels > 0) == 1.0


def test_pooled_counts_weight_every_pixel_equally():
    rng = np.random.default_rng(3)
    a = rng.random((5, 32, 32)) > 0.7
    b = rng.random((5, 32, 32)) > 0.6
    pooled = sum((overlap(x, y) for x, y in zip(a, b)), Overlap())
    assert pooled == overlap(a, b)
    expected = 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())
    assert pooled.dice == pytest.approx(expected)
    per_slice_mean = np.mean([dice(x, y) for x, y in zip(a, b)])
    assert pooled.dice != pytest.approx(per_slice_mean, abs=1e-12)


def test_masks_of_different_shapes_are_a_callers_bug():
    with pytest.raises(ValueError, match="shape"):
        dice(np.zeros((4, 4)), np.zeros((4, 5)))
