"""Object masks replayed from the embedded generator."""

from __future__ import annotations

import numpy as np
import pytest

from reproduce.attribution.objects import embedded_object_masks
from reproduce.data import embedded
from reproduce.errors import ReproduceError

SIZES = {"train": 3, "val": 2, "test": 24}


@pytest.fixture(scope="module")
def test_split():
    arrays = embedded.generate_arrays(n_train=SIZES["train"], n_val=SIZES["val"], n_test=SIZES["test"])
    return arrays["test_images"], embedded_object_masks("test", sizes=SIZES, images=arrays["test_images"])


def test_replay_leaves_the_generator_as_it_was(test_split):
    renderers = embedded._CELLS
    embedded_object_masks("val", sizes=SIZES)
    assert embedded._CELLS is renderers


def test_masks_are_coverage_around_the_centre(test_split):
    images, masks = test_split
    assert masks.shape == (24, 28, 28) and masks.min() >= 0 and masks.max() <= 1
    assert (masks.max(axis=(1, 2)) == 1).all()  # every cell has a fully covered pixel
    assert ((masks > 0) & (masks < 1)).any()  # anti-aliased edges stay soft
    # centres are drawn within +-4 canvas px (+-2 stored px) of the middle; shapes are lopsided
    grid = np.arange(28) + 0.5
    cy = (masks.sum(axis=2) * grid).sum(axis=1) / masks.sum(axis=(1, 2))
    cx = (masks.sum(axis=1) * grid).sum(axis=1) / masks.sum(axis=(1, 2))
    assert np.abs(cy - 14).max() < 5 and np.abs(cx - 14).max() < 5
    assert 0.03 < masks.mean(axis=(1, 2)).min() and masks.mean(axis=(1, 2)).max() < 0.6


def test_masks_sit_on_the_stained_cell(test_split):
    images, masks = test_split
    # stains absorb light: the cell is darker than the smear around it in nearly every image
    grey = images.astype(np.float64).mean(axis=3)
    inside = (grey * (masks > 0.9)).sum(axis=(1, 2)) / (masks > 0.9).sum(axis=(1, 2))
    outside = (grey * (masks == 0)).sum(axis=(1, 2)) / (masks == 0).sum(axis=(1, 2))
    assert (inside < outside).mean() > 0.9


def test_other_images_are_refused(test_split):
    images, _ = test_split
    with pytest.raises(ReproduceError, match="not what"):
        embedded_object_masks("test", sizes=SIZES, images=images[::-1])
    with pytest.raises(ValueError, match="split"):
        embedded_object_masks("holdout", sizes=SIZES)
