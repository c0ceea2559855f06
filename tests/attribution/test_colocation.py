"""Co-location scores and object shares on hand-valued maps."""

from __future__ import annotations

import math

import numpy as np
import pytest

from reproduce.attribution.colocation import (
    colocation_scores,
    object_share,
    pixel_saliency,
    rank_correlation,
    summarise,
    top_k_overlap,
)


def test_rank_correlation_by_hand():
    a = np.array([[1.0, 2.0], [3.0, 4.0]])
    # one swapped pair of 4: 1 - 6 * sum(d^2) / (n (n^2 - 1)) = 1 - 6 * 2 / 60
    assert rank_correlation(a, np.array([[1.0, 3.0], [2.0, 4.0]])) == pytest.approx(0.8)
    assert rank_correlation(a, -a) == pytest.approx(-1.0)
    assert rank_correlation(a, a**3) == pytest.approx(1.0)  # ranks only, not values
    # ties get average ranks: (1.5, 1.5, 3) against (1, 2, 3) -> 1.5 / sqrt(1.5 * 2)
    assert rank_correlation(np.array([1.0, 1.0, 2.0]), np.array([1.0, 2.0, 3.0])) == pytest.approx(1.5 / math.sqrt(3))
    assert math.isnan(rank_correlation(np.zeros((2, 2)), a))


def test_top_k_overlap_by_hand():
    a = np.arange(10.0)  # top 3: pixels 9, 8, 7
    b = np.array([9.0, 0, 0, 0, 0, 0, 0, 5.0, 8.0, 0.5])  # top 3: pixels 0, 8, 7
    assert top_k_overlap(a, b, fraction=0.3) == pytest.approx(2 / 3)
    assert top_k_overlap(a, a, fraction=0.3) == 1.0
    assert top_k_overlap(a, -a, fraction=0.3) == 0.0
    assert top_k_overlap(a, b, fraction=0.01) == 0.0  # k = 1: pixel 9 against pixel 0
    assert math.isnan(top_k_overlap(a, np.ones(10)))
    with pytest.raises(ValueError, match="fraction"):
        top_k_overlap(a, b, fraction=0.0)


def test_object_share_by_hand():
    a = np.array([[1.0, -3.0], [0.0, 0.0]])
    assert object_share(a, np.array([[1.0, 0.0], [0.0, 0.0]])) == pytest.approx(0.25)
    assert object_share(a, np.array([[0.0, 1.0], [1.0, 1.0]])) == pytest.approx(0.75)  # magnitude counts
    assert object_share(a, np.full((2, 2), 0.5)) == pytest.approx(0.5)  # soft coverage
    mask = np.array([[1.0, 1.0], [0.0, 0.5]])
    assert object_share(np.ones((2, 2)), mask) == pytest.approx(mask.mean())  # chance level
    assert math.isnan(object_share(np.zeros((2, 2)), mask))
    with pytest.raises(ValueError, match="shape"):
        object_share(a, np.ones((3, 3)))


def test_pixel_saliency_is_max_abs_over_channels():
    att = np.array([[[[1.0, -2.0]], [[-3.0, 0.5]]]])  # [1, 2, 1, 2]
    np.testing.assert_array_equal(pixel_saliency(att), [[[3.0, 2.0]]])


def test_colocation_scores_and_summary():
    response = np.array([np.arange(4.0).reshape(2, 2), np.ones((2, 2))])
    cam = np.array([np.arange(4.0).reshape(2, 2), np.arange(4.0).reshape(2, 2)])
    masks = np.array([[[0.0, 0.0], [1.0, 1.0]], [[1.0, 0.0], [0.0, 0.0]]])
    scores = colocation_scores(response, {"gradcam": cam}, masks=masks, fraction=0.25)
    np.testing.assert_allclose(scores["rank_correlation/gradcam"], [1.0, np.nan])
    np.testing.assert_allclose(scores["top_k_overlap/gradcam"], [1.0, np.nan])
    np.testing.assert_allclose(scores["object_share/gradcam"], [5 / 6, 0.0])
    np.testing.assert_allclose(scores["object_share/response"], [5 / 6, 0.25])
    np.testing.assert_allclose(scores["object_area"], [0.5, 0.25])
    means = summarise(scores)
    assert means["rank_correlation/gradcam"] == 1.0 and means["rank_correlation/gradcam/undefined"] == 1.0
    assert means["object_share/response"] == pytest.approx((5 / 6 + 0.25) / 2)
    assert "object_area/undefined" not in means
    assert set(colocation_scores(response, {"gradcam": cam})) == {"rank_correlation/gradcam", "top_k_overlap/gradcam"}
