"""Canaries: seeded, of the dataset's layout, and scored with the sign the guesses expect."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reproduce.audit import (
    GradientCanaries,
    inclusion_mask,
    input_canaries,
    loss_scores,
    parameter_vector,
    with_included_canaries,
)


def test_inclusion_mask_is_seeded_and_fair():
    a, b = inclusion_mask(10_000, seed=0), inclusion_mask(10_000, seed=1)
    assert a.dtype == np.bool_ and a.shape == (10_000,)
    np.testing.assert_array_equal(a, inclusion_mask(10_000, seed=0))
    assert (a != b).any()
    # Binomial(10000, 1/2): 4 standard deviations are 200.
    assert abs(int(a.sum()) - 5000) < 200 and abs(int(b.sum()) - 5000) < 200
    # Independent of position: both halves are fair too (a sorted mask would not be).
    assert abs(int(a[:5000].sum()) - 2500) < 150


def _pool(n=50, shape=(8, 8, 3), num_classes=4, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
    labels = rng.integers(0, num_classes, size=(n, 1)).astype(np.int64)
    return images, labels


def test_mislabeled_canaries_copy_distinct_images_with_wrong_labels():
    images, labels = _pool()
    canaries = input_canaries("mislabeled", images, labels, m=30, num_classes=4, seed=7)
    assert canaries.images.shape == (30, 8, 8, 3) and canaries.images.dtype == np.uint8
    assert canaries.labels.shape == (30, 1) and canaries.labels.dtype == np.int64
    assert len(set(canaries.source_index.tolist())) == 30
    np.testing.assert_array_equal(canaries.images, images[canaries.source_index])
    assert (canaries.labels[:, 0] != labels[canaries.source_index, 0]).all()
    assert ((0 <= canaries.labels) & (canaries.labels < 4)).all()
    again = input_canaries("mislabeled", images, labels, m=30, num_classes=4, seed=7)
    np.testing.assert_array_equal(again.labels, canaries.labels)


def test_ood_canaries_are_noise_in_the_dataset_shape():
    images, labels = _pool(shape=(28, 28, 1))
    canaries = input_canaries("ood", images, labels, m=20, num_classes=4, seed=0)
    assert canaries.images.shape == (20, 28, 28, 1) and canaries.images.dtype == np.uint8
    assert (canaries.source_index == -1).all()
    assert canaries.images.std() > 60  # uniform bytes: std ~ 74
    assert ((0 <= canaries.labels) & (canaries.labels < 4)).all()


@pytest.mark.parametrize("kind,m,match", [("mislabeled", 51, "distinct pool images"), ("poison", 5, "unknown")])
def test_input_canaries_refuse_what_they_cannot_build(kind, m, match):
    images, labels = _pool()
    with pytest.raises(ValueError, match=match):
        input_canaries(kind, images, labels, m=m, num_classes=4, seed=0)


def test_included_canaries_join_the_training_set():
    images, labels = _pool(n=50)
    canaries = input_canaries("mislabeled", images, labels, m=10, num_classes=4, seed=1)
    included = inclusion_mask(10, seed=3)
    train_images, train_labels, rows = with_included_canaries(images, labels, canaries, included)
    assert len(train_images) == len(train_labels) == 50 + int(included.sum())  # the N the accountant uses
    assert (rows[~included] == -1).all()
    np.testing.assert_array_equal(train_images[rows[included]], canaries.images[included])
    np.testing.assert_array_equal(train_labels[rows[included]], canaries.labels[included])


def test_loss_scores_rank_low_loss_first():
    np.testing.assert_array_equal(loss_scores(np.array([0.1, 2.0, 0.5])), [-0.1, -2.0, -0.5])


@pytest.mark.parametrize("kind", ["dirac", "gaussian"])
def test_gradient_canary_directions(kind):
    canaries = GradientCanaries(m=20, num_params=500, seed=0, kind=kind)
    directions = np.stack([canaries.direction(i) for i in range(20)])
    np.testing.assert_allclose(np.linalg.norm(directions, axis=1), 1.0)
    np.testing.assert_allclose(np.linalg.norm(canaries.gradient(3, norm=2.5)), 2.5, rtol=1e-6)
    gram = directions @ directions.T - np.eye(20)
    assert np.abs(gram).max() < (1e-12 if kind == "dirac" else 0.3)  # Dirac: distinct coordinates
    np.testing.assert_array_equal(GradientCanaries(m=20, num_params=500, seed=0, kind=kind).direction(5), directions[5])


@pytest.mark.parametrize("kind", ["dirac", "gaussian"])
def test_a_descent_step_on_a_canary_raises_its_score(kind):
    canaries = GradientCanaries(m=10, num_params=300, seed=2, kind=kind)
    theta = np.random.default_rng(0).normal(size=300)
    after = theta - 0.1 * canaries.gradient(4, norm=1.0)
    scores = canaries.scores(theta, after)
    assert scores[4] == pytest.approx(0.1, rel=1e-6)
    assert np.argmax(scores) == 4


def test_gradient_canaries_refuse_too_many_dirac_coordinates():
    with pytest.raises(ValueError, match="distinct coordinates"):
        GradientCanaries(m=11, num_params=10, seed=0, kind="dirac")


def test_parameter_vector_follows_model_parameters_order():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))
    model[1].bias.requires_grad_(False)
    flat = parameter_vector(model)
    expected = torch.cat([model[0].weight.reshape(-1), model[0].bias, model[1].weight.reshape(-1)]).detach()
    np.testing.assert_allclose(flat, expected.double().numpy())
    assert flat.dtype == np.float64
