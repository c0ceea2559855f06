"""Canaries -> mechanism -> scores -> guesses -> bound, on mechanisms whose true epsilon is known.

A valid lower bound exceeds the true epsilon with probability at most 1 - confidence; an
implementation that breaks its guarantee (too little noise, no clipping) must show a bound above
the epsilon its accountant claims.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.optimize
import scipy.stats

from reproduce.audit import GradientCanaries, inclusion_mask, one_run_audit

DELTA = 1e-5


def gaussian_epsilon(mu: float, delta: float) -> float:
    """Exact epsilon at delta of a Gaussian mechanism with sensitivity / noise std = mu (Balle & Wang 2018)."""
    norm = scipy.stats.norm

    def gap(eps: float) -> float:
        return norm.cdf(-eps / mu + mu / 2) - np.exp(eps) * norm.cdf(-eps / mu - mu / 2) - delta

    return scipy.optimize.brentq(gap, 0.0, 500.0)


def randomized_response_scores(included: np.ndarray, epsilon: float, rng: np.random.Generator) -> np.ndarray:
    """Each canary's bit, reported truthfully with probability e^eps / (1 + e^eps): (epsilon, 0)-DP."""
    lie = rng.random(included.size) >= scipy.special.expit(epsilon)
    return (included ^ lie).astype(np.float64)


def test_randomized_response_bound_is_valid_and_nearly_tight():
    """The worst case for pure DP: c ~ Binomial(r, q) exactly, so P[bound > eps] is at most, near, 1 - confidence."""
    epsilon, m, confidence, seeds = 1.0, 1000, 0.8, 300
    bounds = []
    for seed in range(seeds):
        included = inclusion_mask(m, seed=seed)
        scores = randomized_response_scores(included, epsilon, np.random.default_rng([seed, 99]))
        audit = one_run_audit(scores, included, guess_counts=[(200, 200)], delta=0.0, confidence=confidence)
        bounds.append(audit.epsilon_lower_bound)
    exceed = np.mean(np.array(bounds) > epsilon)
    # 300 runs at a true rate <= 0.2: above 0.28 is 3.5 standard deviations away.
    assert exceed <= 0.28, f"the bound exceeded the true epsilon in {exceed:.0%} of runs at {confidence:.0%} confidence"
    # ... and it is not vacuous: it reaches the true epsilon now and then, and is usually near it.
    assert exceed >= 0.05 and np.median(bounds) > 0.75 * epsilon


def dp_sgd_white_box(
    seed: int,
    *,
    m: int,
    noise_multiplier: float,
    steps: int,
    canary_norm: float,
    clip: bool,
    max_grad_norm: float = 1.0,
    num_params: int = 3000,
):
    """Full-batch DP-SGD on m Dirac gradient canaries and 50 ordinary samples.

    Returns:
        (canaries, included, theta_initial, theta_final).
    """
    included = inclusion_mask(m, seed=seed)
    canaries = GradientCanaries(m=m, num_params=num_params, seed=seed, kind="dirac")
    rng = np.random.default_rng([seed, 7])
    theta0 = rng.normal(size=num_params)
    theta = theta0.copy()
    # The real data's per-sample gradients, fixed: norm ~2.7, so clipping matters for them too.
    ordinary = 0.05 * rng.normal(size=(50, num_params))
    for _ in range(steps):
        per_sample = list(ordinary) + [canaries.gradient(i, norm=canary_norm) for i in np.flatnonzero(included)]
        if clip:
            per_sample = [g * min(1.0, max_grad_norm / np.linalg.norm(g)) for g in per_sample]
        noise = noise_multiplier * max_grad_norm * rng.normal(size=num_params)
        theta = theta - 0.05 * (np.sum(per_sample, axis=0) + noise)
    return canaries, included, theta0, theta


def white_box_audit(seed: int, **mechanism):
    canaries, included, theta0, theta = dp_sgd_white_box(seed, **mechanism)
    return one_run_audit(
        canaries.scores(theta0, theta),
        included,
        guess_counts=[(k, k) for k in (25, 50, 100, 250)],
        delta=DELTA,
        confidence=0.95,
    )


@pytest.mark.parametrize("noise_multiplier", [1.0, 2.0])
def test_gaussian_white_box_bound_never_exceeds_the_true_epsilon(noise_multiplier):
    steps = 4
    true_epsilon = gaussian_epsilon(np.sqrt(steps) / noise_multiplier, DELTA)  # T-fold Gaussian composition
    bounds = [
        white_box_audit(
            seed, m=1000, noise_multiplier=noise_multiplier, steps=steps, canary_norm=1.0, clip=True
        ).epsilon_lower_bound
        for seed in range(5)
    ]
    assert max(bounds) <= true_epsilon, (bounds, true_epsilon)
    assert min(bounds) > 0.2  # the canaries are seen, just not beyond what DP allows


def test_non_private_training_shows_a_large_bound():
    audit = white_box_audit(0, m=1000, noise_multiplier=0.0, steps=4, canary_norm=1.0, clip=True)
    assert audit.c == audit.r and audit.epsilon_lower_bound > 4.5


@pytest.mark.parametrize("bug", ["noise 10x too small", "no clipping"])
def test_a_broken_guarantee_shows_a_bound_above_the_accountants_epsilon(bug):
    """The accountant claims sigma = 4 with clipping (epsilon ~2); the code runs something weaker."""
    steps, claimed_sigma = 4, 4.0
    accountant_epsilon = gaussian_epsilon(np.sqrt(steps) / claimed_sigma, DELTA)
    correct = white_box_audit(1, m=1000, noise_multiplier=claimed_sigma, steps=steps, canary_norm=10.0, clip=True)
    broken = white_box_audit(
        1,
        m=1000,
        steps=steps,
        **(
            dict(noise_multiplier=claimed_sigma / 10, canary_norm=10.0, clip=True)
            if bug == "noise 10x too small"
            else dict(noise_multiplier=claimed_sigma, canary_norm=10.0, clip=False)
        ),
    )
    assert not correct.exceeds(accountant_epsilon)
    assert broken.exceeds(accountant_epsilon), (broken.epsilon_lower_bound, accountant_epsilon)
