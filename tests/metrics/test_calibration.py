"""Brier score, ECE and reliability bins against hand-computed values."""

import numpy as np
import pytest

from reproduce.metrics import brier_score, expected_calibration_error, reliability_bins

# conf .90 (correct), .92 (wrong: predicts 1, label 0), .55 (correct)
P = np.array([[0.9, 0.1], [0.08, 0.92], [0.55, 0.45]])
Y = np.array([0, 0, 0])


def test_brier_hand():
    # (.1^2+.1^2) + (.92^2+.92^2) + (.45^2+.45^2) = .02 + 1.6928 + .405 = 2.1178 ; / 3
    assert brier_score(P, Y) == pytest.approx(2.1178 / 3)
    p3 = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4], [0.5, 0.4, 0.1]])
    # .14 + .06 + .74 + 1.22 = 2.16 ; / 4
    assert brier_score(p3, [0, 1, 1, 2]) == pytest.approx(0.54)


def test_reliability_bins_hand():
    bins = reliability_bins(P, Y)
    assert len(bins) == 15
    assert bins[0].lower == 0.0 and bins[-1].upper == 1.0
    # .90*15 = 13.5 and .92*15 = 13.8 -> bin 13 = (13/15, 14/15]; .55*15 = 8.25 -> bin 8
    assert bins[13].count == 2
    assert bins[13].confidence == pytest.approx(0.91) and bins[13].accuracy == 0.5
    assert bins[13].lower == pytest.approx(13 / 15) and bins[13].upper == pytest.approx(14 / 15)
    assert bins[8].count == 1 and bins[8].confidence == pytest.approx(0.55) and bins[8].accuracy == 1.0
    for b, item in enumerate(bins):
        if b not in (8, 13):
            assert item.count == 0 and item.confidence is None and item.accuracy is None
    assert sum(b.count for b in bins) == 3


def test_ece_hand():
    # bin 13: 2/3 * |.5 - .91| ; bin 8: 1/3 * |1 - .55|  -> (.82 + .45) / 3
    assert expected_calibration_error(P, Y) == pytest.approx(1.27 / 3)
    # one bin holding everything: |mean acc - mean conf| = |2/3 - (.9+.92+.55)/3|
    assert expected_calibration_error(P, Y, n_bins=1) == pytest.approx(abs(2 / 3 - 2.37 / 3))


def test_bins_are_right_closed():
    # 10 bins: confidence exactly 0.5 belongs to (0.4, 0.5], 1.0 to (0.9, 1.0]
    p = np.array([[0.5, 0.5], [1.0, 0.0], [0.0, 1.0]])
    bins = reliability_bins(p, [0, 0, 0], n_bins=10)
    assert bins[4].count == 1 and bins[4].confidence == 0.5 and bins[4].accuracy == 1.0
    assert bins[9].count == 2 and bins[9].accuracy == 0.5
    # ECE: 1/3*|1-.5| + 2/3*|.5-1| = 1/2
    assert expected_calibration_error(p, [0, 0, 0], n_bins=10) == pytest.approx(0.5)


def test_all_correct_and_all_wrong_onehot():
    y = np.array([0, 1, 2, 1])
    right = np.eye(3)[y]
    wrong = np.eye(3)[(y + 1) % 3]
    assert brier_score(right, y) == 0.0 and expected_calibration_error(right, y) == 0.0
    assert brier_score(wrong, y) == 2.0 and expected_calibration_error(wrong, y) == 1.0


def test_single_sample():
    # p = [.8, .2], label 1: Brier .64 + .64 ; ECE |0 - .8|
    assert brier_score([[0.8, 0.2]], [1]) == pytest.approx(1.28)
    assert expected_calibration_error([[0.8, 0.2]], [1]) == pytest.approx(0.8)
    assert expected_calibration_error([[0.8, 0.2]], [0]) == pytest.approx(0.2)


def test_binary_single_column_is_expanded():
    # p(positive) = .8, label 1 -> rows [.2, .8]: Brier .04 + .04
    assert brier_score(np.array([0.8]), [1]) == pytest.approx(0.08)
    assert brier_score(np.array([[0.8]]), [[1]]) == pytest.approx(0.08)
    assert expected_calibration_error(np.array([0.3]), [0]) == pytest.approx(0.3)  # conf .7, correct


def test_absent_class_does_not_matter():
    # 3 columns, class 2 never a label: Brier still sums over all 3 columns
    p = np.array([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3]])
    # (.25 + .09 + .04) + (.01 + .16 + .09) = .38 + .26
    assert brier_score(p, [0, 1]) == pytest.approx(0.32)


def test_rejects_logits_and_bad_bins():
    with pytest.raises(ValueError):
        brier_score(np.array([[2.0, -1.0]]), [0])
    with pytest.raises(ValueError):
        expected_calibration_error(np.array([[0.5, 0.2]]), [0])  # row does not sum to 1
    with pytest.raises(ValueError):
        reliability_bins(P, Y, n_bins=0)
