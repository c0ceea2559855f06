"""DP-AdamBC's update and the optimizer registry against hand computations."""

from __future__ import annotations

import math

import pytest
import torch

from reproduce.errors import ReproduceError
from reproduce.privacy.clipped_optimizer import ClippingDPOptimizer
from reproduce.privacy.clipping import make_clipping_rule
from reproduce.privacy.optimizers import OPTIMIZERS, DPAdamBC, dp_noise_variance, make_optimizer
from tests.privacy._tiny import G, flat_params, run_logical_batch, tiny_model


def _steps(opt, p, grads):
    out = []
    for g in grads:
        p.grad = torch.tensor([g], dtype=torch.float64)
        opt.step()
        out.append(p.item())
    return out


def test_dp_adambc_two_steps_by_hand():
    p = torch.nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    opt = DPAdamBC([p], lr=0.1, betas=(0.9, 0.99), gamma_prime=1e-8, noise_variance=0.04)
    # t=1, g=0.5: m = 0.05, v = 0.0025; m^ = 0.5, v^ = 0.25; max(0.25 - 0.04, 1e-8) = 0.21
    theta1 = 1 - 0.1 * 0.5 / math.sqrt(0.21)
    # t=2, g=-0.1: m = 0.045 - 0.01 = 0.035, v = 0.002475 + 0.0001 = 0.002575
    # m^ = 0.035 / 0.19, v^ = 0.002575 / 0.0199; the root of v^ - 0.04
    theta2 = theta1 - 0.1 * (0.035 / 0.19) / math.sqrt(0.002575 / 0.0199 - 0.04)
    assert _steps(opt, p, [0.5, -0.1]) == pytest.approx([theta1, theta2], rel=1e-12)


def test_dp_adambc_floors_the_corrected_second_moment_under_the_root():
    p = torch.nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    opt = DPAdamBC([p], lr=0.1, betas=(0.9, 0.99), gamma_prime=1e-4, noise_variance=1.0)
    # v^ - Phi = 0.25 - 1 < 0 -> floor 1e-4: step lr * m^ / sqrt(1e-4) = 0.1 * 0.5 / 0.01
    assert _steps(opt, p, [0.5]) == pytest.approx([1 - 5.0], rel=1e-12)


def test_without_noise_dp_adambc_is_adam_without_eps():
    torch.manual_seed(0)
    grads = torch.randn(5, 4, dtype=torch.float64)
    a = torch.nn.Parameter(torch.ones(4, dtype=torch.float64))
    b = torch.nn.Parameter(torch.ones(4, dtype=torch.float64))
    ours = DPAdamBC([a], lr=0.01, betas=(0.9, 0.999), gamma_prime=1e-30)
    adam = torch.optim.Adam([b], lr=0.01, betas=(0.9, 0.999), eps=0.0)
    for g in grads:
        a.grad, b.grad = g.clone(), g.clone()
        ours.step()
        adam.step()
    assert torch.allclose(a, b, rtol=1e-12, atol=0)


def test_dp_adambc_weight_decay_is_added_to_the_gradient():
    p = torch.nn.Parameter(torch.tensor([2.0], dtype=torch.float64))
    opt = DPAdamBC([p], lr=0.1, betas=(0.9, 0.99), gamma_prime=1e-8, weight_decay=0.5)
    # g = 0 + 0.5 * 2 = 1: m^ = 1, v^ = 1 -> step 0.1
    assert _steps(opt, p, [0.0]) == pytest.approx([1.9], rel=1e-12)


def test_dp_adambc_inside_the_dp_optimizer_removes_the_noise_it_was_given():
    # Every sample's gradient is 0 and the noise a constant 0.3 per coordinate of the clipped sum:
    # the average is 0.1 = sigma C / B with sigma = 0.3, C = 1, B = 3, so Phi = 0.01 = v^, floored.
    model = tiny_model()
    before = flat_params(model)
    inner = DPAdamBC(model.parameters(), lr=0.1, betas=(0.9, 0.99), gamma_prime=1e-4)
    opt = ClippingDPOptimizer(
        inner,
        clipping=make_clipping_rule("flat"),
        noise_multiplier=0.3,
        max_grad_norm=1.0,
        expected_batch_size=3,
        noise_source=lambda std, ref: torch.full_like(ref, 0.3),
    )
    run_logical_batch(opt, model, [torch.zeros_like(G)])
    assert (
        inner.param_groups[0]["noise_variance"]
        == pytest.approx(dp_noise_variance(noise_multiplier=0.3, max_grad_norm=1.0, expected_batch_size=3), rel=1e-15)
        == pytest.approx(0.01)
    )
    # m^ = 0.1, max(0.01 - 0.01, 1e-4): step 0.1 * 0.1 / 0.01 = 1 (Adam would step lr = 0.1).
    assert torch.allclose(before - flat_params(model), torch.ones(3), atol=1e-5)


def test_registry_sgd_momentum_by_hand():
    p = torch.nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    opt = make_optimizer("sgd", [p], lr=0.1, momentum=0.9, weight_decay=0.0)
    # buf = 0.5 -> 0.95; buf = 0.9 * 0.5 - 0.1 = 0.35 -> 0.915
    assert _steps(opt, p, [0.5, -0.1]) == pytest.approx([0.95, 0.915], rel=1e-12)


def test_registry_names_and_errors():
    assert set(OPTIMIZERS) == {"sgd", "adam", "dp_adambc"}
    params = [torch.nn.Parameter(torch.zeros(1))]
    assert isinstance(
        make_optimizer("adam", params, lr=0.1, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0), torch.optim.Adam
    )
    assert isinstance(
        make_optimizer("dp_adambc", params, lr=0.1, betas=(0.9, 0.999), gamma_prime=1e-8, weight_decay=0.0), DPAdamBC
    )
    with pytest.raises(ReproduceError, match="unknown optimizer 'adamw'; known: adam, dp_adambc, sgd"):
        make_optimizer("adamw", params, lr=0.1)
    with pytest.raises(ReproduceError, match="optimizer 'sgd'"):
        make_optimizer("sgd", params, lr=0.1)
    with pytest.raises(ReproduceError, match="gamma_prime > 0"):
        DPAdamBC(params, lr=0.1, betas=(0.9, 0.999), gamma_prime=0.0)


def test_noise_variance_survives_the_state_dict():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = DPAdamBC([p], lr=0.1, betas=(0.9, 0.999), gamma_prime=1e-8)
    opt.set_noise_variance(0.25)
    fresh = DPAdamBC([p], lr=0.1, betas=(0.9, 0.999), gamma_prime=1e-8)
    fresh.load_state_dict(opt.state_dict())
    assert fresh.param_groups[0]["noise_variance"] == 0.25
