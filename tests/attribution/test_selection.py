"""The seeded per-class selection."""

from __future__ import annotations

import numpy as np
import pytest

from reproduce.attribution.selection import select_per_class

LABELS = np.random.default_rng(0).permutation(np.arange(100) % 4)[:, None]  # MedMNIST's [N, 1]


def test_per_class_counts_order_and_determinism():
    idx = select_per_class(LABELS, per_class=3, seed=7)
    np.testing.assert_array_equal(LABELS[idx, 0], np.repeat(np.arange(4), 3))
    assert len(set(idx.tolist())) == 12
    assert all((np.diff(idx[c * 3 : (c + 1) * 3]) > 0).all() for c in range(4))
    np.testing.assert_array_equal(idx, select_per_class(LABELS, per_class=3, seed=7))
    assert not np.array_equal(idx, select_per_class(LABELS, per_class=3, seed=8))


def test_a_class_pick_does_not_depend_on_other_classes():
    labels = LABELS[:, 0].copy()
    changed = labels.copy()
    changed[np.flatnonzero(changed == 0)[:5]] = 3  # class 0 shrinks, class 3 grows
    a = select_per_class(labels, per_class=2, seed=1)
    b = select_per_class(changed, per_class=2, seed=1)
    np.testing.assert_array_equal(a[2:6], b[2:6])  # classes 1 and 2 keep their images
    assert not np.array_equal(a[6:], b[6:])


def test_refusals():
    with pytest.raises(ValueError, match="class 3 has 0"):
        select_per_class(LABELS[LABELS[:, 0] < 3], per_class=1, classes=4)
    with pytest.raises(ValueError, match="one label per image"):
        select_per_class(np.zeros((5, 3), dtype=int), per_class=1)
