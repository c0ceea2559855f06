"""Rotations and the invariance gap against hand-computed values."""

import math

import numpy as np
import pytest
import torch

from reproduce.metrics import invariance_gap, rotate90, rotate_batch, rotate_bilinear


def test_rotate90_hand_counter_clockwise():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).reshape(1, 1, 2, 2)
    assert rotate90(x).reshape(2, 2).tolist() == [[2.0, 4.0], [1.0, 3.0]]
    assert rotate90(x, 2).reshape(2, 2).tolist() == [[4.0, 3.0], [2.0, 1.0]]
    assert rotate90(x, -1).reshape(2, 2).tolist() == [[3.0, 1.0], [4.0, 2.0]]
    assert torch.equal(rotate90(x, 4), x)


def test_bilinear_90_matches_exact_rotation():
    x = torch.randn(2, 3, 5, 5, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(rotate_bilinear(x, 90), rotate90(x, 1), atol=1e-5)
    assert torch.allclose(rotate_bilinear(x, -90), rotate90(x, 3), atol=1e-5)
    assert torch.allclose(rotate_bilinear(x, 0), x, atol=1e-6)
    assert torch.allclose(rotate_bilinear(x, 360), x, atol=1e-5)


def test_bilinear_45_hand():
    # 3x3 image x[r, c] = 3r + c. Pixel centres in normalised coords: -2/3, 0, 2/3.
    # out[0, 1] (x=0, y=-2/3) samples R(45)(0, -2/3) = (sqrt2/3, -sqrt2/3), i.e. pixel
    # (row 1 - sqrt2/2, col 1 + sqrt2/2): all 4 neighbours inside, bilinear of a linear
    # function is exact: 3(1 - sqrt2/2) + 1 + sqrt2/2 = 4 - sqrt2.
    # out[0, 0] (x=y=-2/3) samples (0, -2 sqrt2/3), i.e. pixel (row 1 - sqrt2, col 1): between
    # the zero padding row -1 and row 0, weight of row 0 = 2 - sqrt2, x[0, 1] = 1 -> 2 - sqrt2.
    x = torch.arange(9, dtype=torch.float64).reshape(1, 1, 3, 3)
    out = rotate_bilinear(x, 45)[0, 0]
    assert out.dtype == torch.float64
    assert out[1, 1].item() == pytest.approx(4.0)
    assert out[0, 1].item() == pytest.approx(4 - math.sqrt(2))
    assert out[0, 0].item() == pytest.approx(2 - math.sqrt(2))


def test_rotate_batch_dispatch():
    x = torch.randn(1, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    assert torch.equal(rotate_batch(x, 90), rotate90(x, 1))
    assert torch.equal(rotate_batch(x, -90), rotate90(x, 3))
    assert torch.equal(rotate_batch(x, 180.0), rotate90(x, 2))
    assert torch.equal(rotate_batch(x, 45), rotate_bilinear(x, 45))
    with pytest.raises(ValueError):
        rotate_bilinear(torch.zeros(1, 1, 2, 3), 45)
    assert rotate_bilinear(torch.ones(1, 1, 3, 3, dtype=torch.uint8), 45).dtype == torch.float32


def _hot(r, c):
    x = torch.zeros(1, 2, 2)
    x[0, r, c] = 1.0
    return x


# predicts class 1 iff the top-left pixel is bright
def _predict_top_left(x):
    return (x[:, 0, 0, 0] > 0.5).long()


def test_invariance_gap_hand():
    # A: hot top-left (label 1), B: hot top-right (label 0), C: all ones (1), D: zeros (0).
    # Originals all correct. Rotating 90 deg ccw moves A's pixel to bottom-left (pred 0, wrong) and
    # B's to top-left (pred 1, wrong); C, D unchanged -> acc 1/2, gap -1/2.
    images = torch.stack([_hot(0, 0), _hot(0, 1), torch.ones(1, 2, 2), torch.zeros(1, 2, 2)])
    labels = torch.tensor([1, 0, 1, 0])
    res = invariance_gap(_predict_top_left, images, labels, 90)
    assert (res.acc_original, res.acc_rotated, res.gap, res.n) == (1.0, 0.5, -0.5, 4)
    assert invariance_gap(_predict_top_left, images, labels[:, None], 90, batch_size=3).gap == -0.5
    # 180 deg: A's pixel to bottom-right (pred 0, wrong), B's to bottom-left (pred 0, right)
    assert invariance_gap(_predict_top_left, images, labels, 180).acc_rotated == 0.75
    assert invariance_gap(_predict_top_left, images, labels, 360).gap == 0.0


def test_invariance_gap_with_scores_and_invariant_model():
    # scores [N, 2] = [-mean, mean]: rotation-invariant for exact rotations -> gap 0 (all-correct)
    images = torch.stack([torch.ones(1, 3, 3), -torch.ones(1, 3, 3)])
    labels = np.array([1, 0])

    def predict(x):
        m = x.mean(dim=(1, 2, 3))
        return torch.stack([-m, m], dim=1)

    res = invariance_gap(predict, images, labels, 90)
    assert (res.acc_original, res.acc_rotated, res.gap) == (1.0, 1.0, 0.0)
    # all-wrong labels: gap 0 as well
    assert invariance_gap(predict, images, 1 - labels, 270).acc_rotated == 0.0
    # 45 deg, bilinear: the centre pixel survives, the mean keeps its sign -> still correct
    assert invariance_gap(predict, images, labels, 45).gap == 0.0
    # single sample
    assert invariance_gap(predict, images[:1], labels[:1], 45).n == 1


def test_invariance_gap_errors():
    with pytest.raises(ValueError):
        invariance_gap(_predict_top_left, torch.zeros(2, 1, 2, 2), [0], 90)
    with pytest.raises(ValueError):
        invariance_gap(lambda x: torch.zeros(x.shape[0]), torch.zeros(2, 1, 2, 2), [0, 0], 90)  # float 1-D
    with pytest.raises(ValueError):
        invariance_gap(_predict_top_left, torch.zeros(0, 1, 2, 2), [], 90)
