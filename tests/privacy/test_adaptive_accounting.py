"""Adaptive clipping's privacy (Andrew et al. 2021, Theorem 1) against independent computations."""

from __future__ import annotations

import math

import pytest
import torch
from opacus.accountants import RDPAccountant
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

from reproduce.errors import ReproduceError
from reproduce.privacy.adaptive_accounting import (
    adaptive_epsilon,
    calibrate_adaptive_noise,
    effective_noise_multiplier,
    gradient_noise_multiplier,
)
from reproduce.privacy.clipped_optimizer import ClippingDPOptimizer
from reproduce.privacy.clipping import make_clipping_rule
from tests.privacy._tiny import G, run_logical_batch, tiny_model

ORDERS = RDPAccountant.DEFAULT_ALPHAS


def test_theorem_1_equals_the_sensitivity_of_the_joint_release():
    # Independent route: rescale the count by sigma_grad C / sigma_b; one sample then adds a vector of
    # norm <= C sqrt(1 + (sigma_grad * 0.5 / sigma_b)^2) under noise std sigma_grad C.
    for sigma_grad, sigma_b in [(1.0, 1.0), (0.8, 3.0), (2.5, 12.8)]:
        sensitivity = math.sqrt(1 + (sigma_grad * 0.5 / sigma_b) ** 2)
        assert effective_noise_multiplier(
            gradient_noise_multiplier=sigma_grad, count_noise_std=sigma_b
        ) == pytest.approx(sigma_grad / sensitivity, rel=1e-14)


def test_gradient_noise_inverts_theorem_1():
    sigma_grad = gradient_noise_multiplier(effective_noise_multiplier=1.1, count_noise_std=3.2)
    assert sigma_grad > 1.1
    assert effective_noise_multiplier(gradient_noise_multiplier=sigma_grad, count_noise_std=3.2) == pytest.approx(
        1.1, rel=1e-14
    )


def test_without_subsampling_the_epsilon_is_the_rdp_composition_of_the_two_gaussians():
    # q = 1: the joint release is two Gaussian mechanisms, RDP alpha / (2 sigma^2) each, composed
    # exactly; the count's multiplier is sigma_b over its sensitivity 1/2.
    sigma_grad, sigma_b, steps, delta = 1.2, 2.0, 10, 1e-5
    rdp = compute_rdp(q=1.0, noise_multiplier=sigma_grad, steps=steps, orders=ORDERS) + compute_rdp(
        q=1.0, noise_multiplier=sigma_b / 0.5, steps=steps, orders=ORDERS
    )
    independent, _ = get_privacy_spent(orders=ORDERS, rdp=rdp, delta=delta)
    ours = adaptive_epsilon(
        gradient_noise_multiplier=sigma_grad,
        count_noise_std=sigma_b,
        delta=delta,
        sample_rate=1.0,
        steps=steps,
        accountant="rdp",
    )
    assert ours == pytest.approx(independent, rel=1e-10)


def test_poisson_epsilon_equals_the_rdp_accountant_at_the_joint_noise_multiplier():
    sigma_grad, sigma_b, q, steps, delta = 1.3, 6.4, 0.01, 200, 1e-5
    joint = sigma_grad / math.sqrt(1 + (sigma_grad / (2 * sigma_b)) ** 2)
    rdp = compute_rdp(q=q, noise_multiplier=joint, steps=steps, orders=ORDERS)
    independent, _ = get_privacy_spent(orders=ORDERS, rdp=rdp, delta=delta)
    assert adaptive_epsilon(
        gradient_noise_multiplier=sigma_grad,
        count_noise_std=sigma_b,
        delta=delta,
        sample_rate=q,
        steps=steps,
        accountant="rdp",
    ) == pytest.approx(independent, rel=1e-10)


# opacus's bisection tries noise levels whose best RDP order is its largest; harmless here.
@pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha")
def test_calibrated_noise_meets_the_target_and_the_optimizer_accounts_it():
    q, steps, delta, target = 0.25, 3, 1e-5, 8.0
    noise = calibrate_adaptive_noise(
        target_epsilon=target, delta=delta, sample_rate=q, steps=steps, accountant="rdp", count_noise_std=2.0
    )
    eps = adaptive_epsilon(
        gradient_noise_multiplier=noise.gradient,
        count_noise_std=2.0,
        delta=delta,
        sample_rate=q,
        steps=steps,
        accountant="rdp",
    )
    assert target - 0.02 <= eps <= target
    # The trainer's wiring: the optimizer gets sigma_eff, its hook feeds an accountant, the gradient
    # noise it applies is sigma_grad.
    model = tiny_model()
    rule = make_clipping_rule("adaptive", target_quantile=0.5, learning_rate=0.2, count_noise_std=2.0)
    opt = ClippingDPOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1),
        clipping=rule,
        noise_multiplier=noise.effective,
        max_grad_norm=1.0,
        expected_batch_size=3,
        generator=torch.Generator().manual_seed(0),
    )
    accountant = RDPAccountant()
    opt.attach_step_hook(accountant.get_optimizer_hook_fn(sample_rate=q))
    for _ in range(steps):
        run_logical_batch(opt, model, [G[:2], G[2:]])
    assert opt.gradient_noise_multiplier == pytest.approx(noise.gradient, rel=1e-14)
    assert accountant.get_epsilon(delta) == pytest.approx(eps, rel=1e-12)


def test_too_little_count_noise_is_refused():
    with pytest.raises(ReproduceError, match="count_noise_std=0.5 is too small"):
        gradient_noise_multiplier(effective_noise_multiplier=1.0, count_noise_std=0.5)
    with pytest.raises(ReproduceError, match="noise on both sums"):
        effective_noise_multiplier(gradient_noise_multiplier=1.0, count_noise_std=0.0)
