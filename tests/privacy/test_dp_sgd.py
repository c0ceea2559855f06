"""DP-SGD correctness against independent ground truth: brute-force gradients, noise statistics, accountant."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer
from torch.utils.data import TensorDataset

from reproduce.errors import ReproduceError
from reproduce.models import build_model
from reproduce.privacy.accounting import calibrate_noise, epsilon_for, poisson_steps_per_epoch
from reproduce.privacy.clipping import make_clipping_rule
from reproduce.privacy.dp_sgd import make_private


def _batch(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 28, 28, generator=g), torch.randint(0, 8, (n,), generator=g)


def _brute_force_grads(model, x, y):
    """One backward per sample: the definition of a per-sample gradient."""
    out = []
    for i in range(len(x)):
        model.zero_grad()
        F.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        out.append([p.grad.detach().clone() for p in model.parameters()])
    return out


def test_conventional_per_sample_gradients_match_brute_force():
    model = build_model(group="e", widths=(4, 8, 8), in_channels=3, num_classes=8, seed=0).double()
    x, y = _batch()
    x = x.double()
    expected = _brute_force_grads(model, x, y)
    gsm = GradSampleModule(model, loss_reduction="sum")
    gsm.zero_grad()
    F.cross_entropy(gsm(x), y, reduction="sum").backward()
    for j, p in enumerate(model.parameters()):
        want = torch.stack([e[j] for e in expected])
        rel = (p.grad_sample - want).norm() / want.norm().clamp_min(1e-30)
        assert rel < 1e-5, (j, rel.item())


def _dp_step(model, x, y, *, noise_multiplier, max_grad_norm, expected_batch_size, generator=None):
    gsm = GradSampleModule(model, loss_reduction="mean")
    opt = DPOptimizer(
        torch.optim.SGD(model.parameters(), lr=1.0),
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        expected_batch_size=expected_batch_size,
        generator=generator,
    )
    opt.zero_grad()
    F.cross_entropy(gsm(x), y).backward()
    opt.pre_step()  # clip, accumulate, noise, scale: the gradient the step would apply
    grads = [p.grad.detach().clone() for p in model.parameters()]
    gsm._close()
    return grads


def test_each_clipped_per_sample_gradient_is_within_the_norm():
    model = build_model(group="e", widths=(4, 8, 8), in_channels=3, num_classes=8, seed=0)
    x, y = _batch(n=5)
    x[0] *= 50  # a sample with a large gradient, certainly clipped
    raw = _brute_force_grads(model, x, y)
    for i in range(len(x)):
        g = _dp_step(model, x[i : i + 1], y[i : i + 1], noise_multiplier=0.0, max_grad_norm=0.1, expected_batch_size=1)
        norm = math.sqrt(sum(float(t.pow(2).sum()) for t in g))
        raw_norm = math.sqrt(sum(float(t.pow(2).sum()) for t in raw[i]))
        assert norm <= 0.1 + 1e-6
        assert norm == pytest.approx(min(raw_norm, 0.1), rel=1e-4)


def test_noiseless_update_equals_brute_force_clipped_mean():
    model = build_model(group="e", widths=(4, 8, 8), in_channels=3, num_classes=8, seed=1).double()
    x, y = _batch(n=7, seed=3)
    x = x.double()
    C, B = 0.5, 7
    raw = _brute_force_grads(model, x, y)
    want = [torch.zeros_like(p) for p in model.parameters()]
    for g in raw:
        norm = math.sqrt(sum(float(t.pow(2).sum()) for t in g))  # over ALL parameters
        factor = min(1.0, C / (norm + 1e-6))
        for w, t in zip(want, g):
            w += factor * t / B
    got = _dp_step(model, x, y, noise_multiplier=0.0, max_grad_norm=C, expected_batch_size=B)
    for w, g in zip(want, got):
        assert torch.allclose(g, w, rtol=1e-8, atol=1e-12)


def test_noise_has_std_sigma_times_clip_norm():
    # Zero input and zero-initialised weights give zero gradients: what remains is pure noise.
    lin = torch.nn.Linear(100, 100, bias=False)
    torch.nn.init.zeros_(lin.weight)
    x, y = torch.zeros(4, 100), torch.zeros(4, 100)
    sigma, C, B = 1.3, 0.7, 4
    gsm = GradSampleModule(lin, loss_reduction="mean")
    opt = DPOptimizer(
        torch.optim.SGD(lin.parameters(), lr=1.0),
        noise_multiplier=sigma,
        max_grad_norm=C,
        expected_batch_size=B,
        generator=torch.Generator().manual_seed(0),
    )
    draws = []
    for _ in range(20):
        opt.zero_grad()
        F.mse_loss(gsm(x), y).backward()
        opt.pre_step()
        draws.append(lin.weight.grad.flatten() * B)  # undo the 1/B averaging
    noise = torch.cat(draws).double()  # 200,000 draws
    n = noise.numel()
    # std estimate has relative standard error 1/sqrt(2n) ~ 0.16%: 1.5% is > 9 standard errors.
    assert noise.std().item() == pytest.approx(sigma * C, rel=0.015)
    assert abs(noise.mean().item()) < 5 * sigma * C / math.sqrt(n)


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
@pytest.mark.parametrize("target", [1.0, 7.42])
def test_calibrated_epsilon_is_at_most_and_within_one_percent_of_target(accountant, target):
    q, steps = 256 / 4000, 10 * poisson_steps_per_epoch(256 / 4000)
    sigma = calibrate_noise(target_epsilon=target, delta=1e-5, sample_rate=q, steps=steps, accountant=accountant)
    eps = epsilon_for(noise_multiplier=sigma, delta=1e-5, sample_rate=q, steps=steps, accountant=accountant)
    assert eps <= target
    assert eps >= 0.99 * target
    # Less noise must spend more than the target (the calibration is the smallest sufficient sigma).
    assert (
        epsilon_for(noise_multiplier=sigma * 0.97, delta=1e-5, sample_rate=q, steps=steps, accountant=accountant)
        > target
    )


def test_make_private_accounts_for_the_sample_rate_and_steps_that_run():
    """The authors' defect: q = 1/len(loader) != B/N. Here the loader runs at exactly the accounted q."""
    model = build_model(group="e", widths=(4, 4, 4), in_channels=3, num_classes=8, seed=0)
    n, B = 1000, 64  # 1000/64 is not an integer: 1/len(loader) would be 1/15, not 0.064
    ds = TensorDataset(torch.randn(n, 3, 28, 28), torch.randint(0, 8, (n,)))
    dp = make_private(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        ds,
        batch_size=B,
        epochs=1,
        target_epsilon=8.0,
        delta=1e-5,
        max_grad_norm=1.0,
        accountant="rdp",
        seed=0,
    )
    assert dp.sample_rate == B / n
    assert dp.loader.batch_sampler.sample_rate == B / n
    assert dp.steps == len(dp.loader) == 15
    sizes = [len(x) for x, _ in dp.loader]
    assert len(sizes) == 15 and len(set(sizes)) > 1  # Poisson: random batch sizes
    assert abs(sum(sizes) / len(sizes) - B) < 4 * math.sqrt(B)


@pytest.mark.parametrize(
    "rule, parameters",
    [
        ("flat", {}),
        ("automatic", {"gamma": 0.05}),
        ("adaptive", {"target_quantile": 0.7, "learning_rate": 0.3, "count_noise_std": 4.0}),
    ],
)
def test_make_private_returns_the_mechanism_its_optimizer_sampler_and_accountant_run(rule, parameters):
    """The mechanism the statement states is read from the parts that run, and does not move after."""
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    n, B = 1000, 64  # N not a multiple of B: q = B/N, N the sampler's
    ds = TensorDataset(torch.randn(n, 3, 2, 2), torch.randint(0, 3, (n,)))
    dp = make_private(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        ds,
        batch_size=B,
        epochs=1,
        target_epsilon=4.0,
        delta=1e-6,
        max_grad_norm=0.5,
        accountant="rdp",
        seed=0,
        clipping=make_clipping_rule(rule, **parameters),
        rescale_to_unit_norm=True,
    )
    m = dp.mechanism
    sigma = calibrate_noise(target_epsilon=4.0, delta=1e-6, sample_rate=B / n, steps=15, accountant="rdp")
    assert (m.accountant, m.target_epsilon, m.delta, m.max_grad_norm) == ("rdp", 4.0, 1e-6, 0.5)
    assert (m.sample_rate, m.training_set_size, m.steps) == (B / n, n, 15) == (dp.sample_rate, n, dp.steps)
    assert m.noise_multiplier == sigma == dp.optimizer.noise_multiplier
    assert m.gradient_noise_multiplier == dp.optimizer.gradient_noise_multiplier
    # Adaptive clipping's count shares the budget: the gradient gets more noise than is accounted.
    assert (m.gradient_noise_multiplier > sigma) if rule == "adaptive" else (m.gradient_noise_multiplier == sigma)
    assert m.clipping == rule and dict(m.clipping_parameters) == parameters
    assert m.rescale_to_unit_norm and m.sampling == "Poisson" and not m.secure_mode
    # One (empty) logical step: the accountant accounts exactly the mechanism's sigma and q.
    for p in model.parameters():
        p.grad_sample = p.new_zeros((0, *p.shape))
    dp.optimizer.step()
    assert dp.accountant.history == [(m.noise_multiplier, m.sample_rate, 1)]
    # Frozen, and read when built: a noiseless check or an adaptive C does not rewrite what was stated.
    dp.optimizer.noise_multiplier, dp.optimizer.max_grad_norm = 0.0, 2.0
    assert (dp.mechanism.noise_multiplier, dp.mechanism.max_grad_norm) == (sigma, 0.5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.steps = 1


def test_secure_mode_mechanism_reads_the_secure_sampler():
    model = torch.nn.Linear(4, 2)
    ds = TensorDataset(torch.randn(200, 4), torch.randint(0, 2, (200,)))
    dp = make_private(
        model,
        torch.optim.SGD(model.parameters(), lr=1.0),
        ds,
        batch_size=40,
        steps=5,
        target_epsilon=8.0,
        delta=1e-5,
        max_grad_norm=1.0,
        accountant="rdp",
        seed=0,
        secure_mode=True,
    )
    m = dp.mechanism
    assert m.secure_mode and (m.sample_rate, m.training_set_size, m.steps) == (0.2, 200, 5)
    assert m.sample_rate == dp.loader.batch_sampler.sample_rate and m.clipping == "flat" and m.clipping_parameters == ()


@pytest.mark.parametrize("mode", ["engine", "hooks"])
def test_layer_without_exact_rule_is_refused_never_trained_non_privately(mode):
    class Scaled(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.ones(1))

        def forward(self, x):
            return x * self.scale

    model = torch.nn.Sequential(torch.nn.Flatten(), Scaled(), torch.nn.Linear(3 * 28 * 28, 8))
    ds = TensorDataset(torch.randn(100, 3, 28, 28), torch.randint(0, 8, (100,)))
    with pytest.raises(ReproduceError, match="Scaled"):
        make_private(
            model,
            torch.optim.SGD(model.parameters(), lr=0.1),
            ds,
            batch_size=10,
            epochs=1,
            target_epsilon=8.0,
            delta=1e-5,
            max_grad_norm=1.0,
            accountant="rdp",
            seed=0,
            per_sample_gradients=mode,
        )


@pytest.mark.parametrize("mode", ["engine", "hooks"])
def test_make_private_step_of_an_escnn_model_is_the_brute_force_clipped_mean(mode):
    """The trainer's DP step (make_private + DPOptimizer), noise off, against one backward per sample."""
    model = build_model(group="C4", widths=(2, 4, 4), in_channels=3, num_classes=8, seed=0).double()
    x, y = _batch(n=6, seed=4)
    x = x.double()
    per_sample = _brute_force_grads(model, x, y)
    model.zero_grad(set_to_none=True)
    norms = torch.stack([torch.cat([g.flatten() for g in grads]).norm() for grads in per_sample])
    C = norms.median().item()  # some samples clipped, some not
    # opacus's clip factor is min(1, C / (norm + 1e-6)) (its guard against division by zero)
    want = [
        sum(g[j] * min(1.0, C / (n.item() + 1e-6)) for g, n in zip(per_sample, norms)) / len(x)
        for j in range(len(per_sample[0]))
    ]
    ds = TensorDataset(x, y)
    dp = make_private(
        model,
        torch.optim.SGD(model.parameters(), lr=1.0),
        ds,
        batch_size=len(x),
        epochs=1,
        target_epsilon=8.0,
        delta=1e-5,
        max_grad_norm=C,
        accountant="rdp",
        seed=0,
        per_sample_gradients=mode,
    )
    dp.optimizer.noise_multiplier = 0.0
    before = [p.detach().clone() for p in model.parameters()]
    dp.backward(F.cross_entropy(dp.model(x), y))
    if mode == "engine":
        assert dp.model is model
        assert all(p.grad is None for p in model.parameters())  # no batch gradient is computed
    dp.optimizer.step()
    for b, p, w in zip(before, model.parameters(), want):
        assert ((b - p.detach()) - w).norm() <= 1e-10 * w.norm().clamp_min(1e-30)


def test_engine_gives_an_empty_batch_zero_per_sample_gradients_for_conventional_layers():
    """opacus's own nn.Conv2d rule returns one sample for an empty batch; the engine must not pass that on."""
    from reproduce.privacy.fast_engine import OutputGradientEngine

    model = build_model(group="e", widths=(4, 4, 8), in_channels=3, num_classes=8, seed=0)
    engine = OutputGradientEngine(model)
    opt = DPOptimizer(
        torch.optim.SGD(model.parameters(), lr=1.0),
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        expected_batch_size=4,
        generator=torch.Generator().manual_seed(0),
    )
    before = [p.detach().clone() for p in model.parameters()]
    engine.backward(F.cross_entropy(model(torch.zeros(0, 3, 28, 28)), torch.zeros(0, dtype=torch.long)))
    for p in model.parameters():
        assert p.grad_sample.shape == (0, *p.shape)
    opt.step()  # noise only: std sigma * C / B per coordinate
    step = torch.cat([(b - p.detach()).flatten() for b, p in zip(before, model.parameters())])
    assert torch.isfinite(step).all() and abs(step.std().item() - 1.0 / 4) < 0.05
