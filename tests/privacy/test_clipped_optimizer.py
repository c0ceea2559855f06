"""ClippingDPOptimizer against opacus and hand computations, across micro-batches."""

from __future__ import annotations

import math

import pytest
import torch
from opacus.optimizers import AdaClipDPOptimizer, DPOptimizer

from reproduce.errors import ReproduceError
from reproduce.metrics.clipping import clipping_diagnostics
from reproduce.privacy.clipped_optimizer import ClippingDPOptimizer
from reproduce.privacy.clipping import make_clipping_rule
from reproduce.privacy.optimizers import DPAdamBC
from tests.privacy._tiny import G, flat_grad, flat_params, run_logical_batch, tiny_model


class ScriptedNoise:
    """A noise source that returns ``gradient`` (a constant) for tensors and the next count noise for scalars."""

    def __init__(self, gradient: float = 0.0, counts=()):
        self.gradient, self.counts, self.stds = gradient, list(counts), []

    def __call__(self, std, reference):
        self.stds.append((std, reference.dim()))
        if reference.dim() == 0:
            return torch.full_like(reference, self.counts.pop(0))
        return torch.full_like(reference, self.gradient)


def _random_batches(seed=0):
    g = torch.Generator().manual_seed(seed)
    rows = lambda n: torch.randn(n, 3, generator=g) * 3  # noqa: E731
    # Logical batches as micro-batch lists: split, whole, empty (a noise-only step), split in three.
    return [[rows(2), rows(3)], [rows(4)], [torch.zeros(0, 3)], [rows(1), rows(2), rows(2)]]


def test_flat_rule_is_opacus_dp_optimizer_bit_for_bit():
    ours_model, theirs_model = tiny_model(), tiny_model()
    kw = dict(noise_multiplier=1.3, max_grad_norm=2.0, expected_batch_size=3, loss_reduction="mean")
    ours = ClippingDPOptimizer(
        torch.optim.SGD(ours_model.parameters(), lr=0.1, momentum=0.9),
        clipping=make_clipping_rule("flat"),
        generator=torch.Generator().manual_seed(7),
        **kw,
    )
    theirs = DPOptimizer(
        torch.optim.SGD(theirs_model.parameters(), lr=0.1, momentum=0.9),
        generator=torch.Generator().manual_seed(7),
        **kw,
    )
    for batch in _random_batches():
        run_logical_batch(ours, ours_model, batch)
        run_logical_batch(theirs, theirs_model, batch)
        assert torch.equal(flat_params(ours_model), flat_params(theirs_model))
    assert ours.max_grad_norm == 2.0


def test_automatic_rule_sums_the_normalised_gradients_each_below_C():
    model = tiny_model()
    opt = ClippingDPOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.0),
        clipping=make_clipping_rule("automatic", gamma=0.01),
        noise_multiplier=0.0,
        max_grad_norm=2.0,
        expected_batch_size=1,
    )
    for i in range(3):  # one sample per logical batch: the clipped sum is that sample's clipped gradient
        run_logical_batch(opt, model, [G[i : i + 1]])
        norm = G[i].norm().item()
        assert flat_grad(model).norm().item() == pytest.approx(2 * norm / (norm + 0.01), rel=1e-6)
        assert flat_grad(model).norm().item() < 2.0
    opt.expected_batch_size = 3
    run_logical_batch(opt, model, [G[:1], G[1:]])
    hand = (2 / 5.01) * G[0] + (2 / 1.01) * G[1] + (2 / 3.01) * G[2]
    assert torch.allclose(flat_grad(model) * 3, hand, atol=1e-6)


def _adaptive(model, noise, *, inner=None, c0=2.0):
    rule = make_clipping_rule("adaptive", target_quantile=0.5, learning_rate=0.2, count_noise_std=1.0)
    return ClippingDPOptimizer(
        inner or torch.optim.SGD(model.parameters(), lr=0.0),
        clipping=rule,
        noise_multiplier=1.0,
        max_grad_norm=c0,
        expected_batch_size=4,
        noise_source=noise,
    )


# Three logical batches: norms (5, 1, 3), (5, 1, 3, 0.5), (1.5, 2.5); count noises 0.3, -0.2, 0.1.
STEPS = [G, torch.cat([G, G[1:2] * 0.5]), torch.tensor([[1.5, 0.0, 0.0], [0.0, 0.0, 2.5]])]
COUNT_NOISE = [0.3, -0.2, 0.1]
# By hand, B = 4, gamma = 0.5, eta = 0.2:
#  1: C=2, 1 of 3 unclipped: b~ = ((1 - 1.5) + 0.3) / 4 + 0.5 = 0.45 -> C = 2 exp(0.01)
#  2: 2 of 4 unclipped (1, 0.5):  b~ = ((2 - 2) - 0.2) / 4 + 0.5 = 0.45 -> C = 2 exp(0.02)
#  3: C = 2.0404: 1 of 2 (1.5):   b~ = ((1 - 1) + 0.1) / 4 + 0.5 = 0.525 -> C = 2 exp(0.015)
HAND_TRAJECTORY = [2.0, 2 * math.exp(0.01), 2 * math.exp(0.02), 2 * math.exp(0.015)]


@pytest.mark.parametrize("split", [1, 2, 3], ids=["whole", "halves", "thirds"])
def test_adaptive_clipping_norm_follows_the_hand_trajectory_however_the_batch_is_split(split):
    model = tiny_model()
    opt = _adaptive(model, ScriptedNoise(counts=COUNT_NOISE))
    trajectory = [opt.max_grad_norm]
    for rows in STEPS:
        run_logical_batch(opt, model, list(torch.tensor_split(rows, min(split, len(rows)))))
        trajectory.append(opt.max_grad_norm)
    assert trajectory == pytest.approx(HAND_TRAJECTORY, rel=1e-12)


def test_adaptive_gradient_noise_is_raised_and_dp_adambc_is_told_its_variance():
    model = tiny_model()
    noise = ScriptedNoise(counts=COUNT_NOISE)
    inner = DPAdamBC(model.parameters(), lr=0.0, betas=(0.9, 0.999), gamma_prime=1e-8)
    opt = _adaptive(model, noise, inner=inner)
    sigma_grad = (1.0 - 0.25) ** -0.5  # (sigma_eff^-2 - (2 sigma_b)^-2)^-1/2, sigma_eff = sigma_b = 1
    assert opt.gradient_noise_multiplier == pytest.approx(sigma_grad, rel=1e-15)
    for t, rows in enumerate(STEPS):
        noise.stds.clear()
        run_logical_batch(opt, model, [rows[:1], rows[1:]])
        c_t = HAND_TRAJECTORY[t]
        # weight, bias: sigma_grad * C_t; the count: sigma_b
        assert [dim for _, dim in noise.stds] == [2, 1, 0]
        assert [std for std, _ in noise.stds] == pytest.approx([sigma_grad * c_t, sigma_grad * c_t, 1.0], rel=1e-12)
        assert inner.param_groups[0]["noise_variance"] == pytest.approx((sigma_grad * c_t / 4) ** 2, rel=1e-12)
        assert opt.applied_max_grad_norm == pytest.approx(c_t, rel=1e-12)


def test_opacus_adaclip_forgets_earlier_micro_batches():
    """Why the suite does not use opacus's AdaClipDPOptimizer (opacus 1.6): zero_grad after every
    micro-batch clears its count, so C moves by the last micro-batch only. If this starts failing,
    opacus changed; re-read its code before relying on it."""
    model = tiny_model()
    opt = AdaClipDPOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.0),
        noise_multiplier=0.0,
        target_unclipped_quantile=0.5,
        clipbound_learning_rate=0.2,
        max_clipbound=100.0,
        min_clipbound=0.01,
        unclipped_num_std=1e-12,
        max_grad_norm=2.0,
        expected_batch_size=4,
        generator=torch.Generator().manual_seed(0),
    )
    unclipped, clipped = G[1:2].repeat(2, 1), G[:1].repeat(2, 1)  # half the logical batch unclipped
    run_logical_batch(opt, model, [unclipped, clipped])
    # Correct: b = 1/2 = target, C stays 2. opacus: b = 0/2 from the last micro-batch, C = 2 exp(0.1).
    assert float(opt.max_grad_norm) == pytest.approx(2 * math.exp(0.1), rel=1e-6)


def test_step_record_and_diagnostics_by_hand_across_micro_batches():
    model = tiny_model()
    before = flat_params(model)
    noise = ScriptedNoise(gradient=0.1)
    opt = ClippingDPOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.5),
        clipping=make_clipping_rule("flat"),
        noise_multiplier=1.0,
        max_grad_norm=2.0,
        expected_batch_size=3,
        noise_source=noise,
        record_diagnostics=True,
    )
    run_logical_batch(opt, model, [G[:2], G[2:]])
    rec = opt.last_step_record
    clipped = (2 / (5 + 1e-6)) * G[0] + G[1] + (2 / (3 + 1e-6)) * G[2]
    assert torch.allclose(rec.norms, torch.tensor([5.0, 1.0, 3.0], dtype=torch.float64))
    assert torch.allclose(rec.unclipped_sum, G.sum(0).double())
    assert torch.allclose(rec.clipped_sum, clipped.double(), atol=1e-6)
    assert torch.allclose(rec.noise, torch.full((3,), 0.1, dtype=torch.float64))
    # SGD: theta_t - theta_{t+1} = lr * (clipped + noise) / B
    assert torch.allclose(rec.descent, (0.5 * (clipped + 0.1) / 3).double(), atol=1e-6)
    assert torch.allclose(before - flat_params(model), rec.descent.float(), atol=1e-7)
    d = clipping_diagnostics(rec)
    assert d.share_clipped == pytest.approx(2 / 3)
    assert d.max_grad_norm == 2.0
    expected_cos = float(clipped @ G.sum(0)) / float(clipped.norm() * G.sum(0).norm())
    assert d.clip_bias_cosine == pytest.approx(expected_cos, rel=1e-6)
    assert d.noise_to_signal == pytest.approx(0.1 * math.sqrt(3) / float(clipped.norm()), rel=1e-6)


def test_nothing_is_recorded_unless_asked_at_the_start_of_a_logical_batch():
    model = tiny_model()
    opt = ClippingDPOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1),
        clipping=make_clipping_rule("flat"),
        noise_multiplier=1.0,
        max_grad_norm=2.0,
        expected_batch_size=3,
        noise_source=ScriptedNoise(),
    )
    run_logical_batch(opt, model, [G])
    assert opt.last_step_record is None
    opt.record_diagnostics = True
    run_logical_batch(opt, model, [G[:1], G[1:]])
    assert len(opt.last_step_record.norms) == 3
    opt.record_diagnostics = False
    run_logical_batch(opt, model, [G])
    assert opt.last_step_record is None


def test_secure_mode_draws_gradient_and_count_noise_from_the_os(monkeypatch):
    import reproduce.privacy.secure_rng as secure_rng

    calls = []
    real = secure_rng.os_gaussian_noise
    monkeypatch.setattr(secure_rng, "os_gaussian_noise", lambda std, ref: calls.append(ref.dim()) or real(std, ref))
    model = tiny_model()
    rule = make_clipping_rule("adaptive", target_quantile=0.5, learning_rate=0.2, count_noise_std=1.0)
    opt = ClippingDPOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1),
        clipping=rule,
        noise_multiplier=1.0,
        max_grad_norm=2.0,
        expected_batch_size=4,
        secure_mode=True,
    )
    run_logical_batch(opt, model, [G[:1], G[1:]])
    assert calls == [2, 1, 0] and opt.max_grad_norm != 2.0
    with pytest.raises(ReproduceError, match="secure mode"):
        ClippingDPOptimizer(
            torch.optim.SGD(model.parameters(), lr=0.1),
            clipping=rule,
            noise_multiplier=1.0,
            max_grad_norm=2.0,
            expected_batch_size=4,
            secure_mode=True,
            generator=torch.Generator(),
        )


def test_clipping_state_round_trips_and_refuses_another_rule():
    model = tiny_model()
    opt = _adaptive(model, ScriptedNoise(counts=COUNT_NOISE))
    run_logical_batch(opt, model, [STEPS[0]])
    state = opt.clipping_state_dict()
    fresh = _adaptive(tiny_model(), ScriptedNoise(counts=COUNT_NOISE[1:]))
    fresh.load_clipping_state_dict(state)
    assert fresh.max_grad_norm == opt.max_grad_norm == pytest.approx(HAND_TRAJECTORY[1])
    flat = ClippingDPOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1),
        clipping=make_clipping_rule("flat"),
        noise_multiplier=1.0,
        max_grad_norm=2.0,
        expected_batch_size=3,
    )
    with pytest.raises(ReproduceError, match="'adaptive'"):
        flat.load_clipping_state_dict(state)


def test_adaptive_refuses_a_count_noise_too_small_for_the_budget():
    rule = make_clipping_rule("adaptive", target_quantile=0.5, learning_rate=0.2, count_noise_std=0.4)
    with pytest.raises(ReproduceError, match="2 \\* count_noise_std > noise multiplier"):
        ClippingDPOptimizer(
            torch.optim.SGD(tiny_model().parameters(), lr=0.1),
            clipping=rule,
            noise_multiplier=1.0,
            max_grad_norm=1.0,
            expected_batch_size=4,
        )
