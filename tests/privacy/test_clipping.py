"""Clipping rules against hand computations: factors, the per-sample bound, the quantile update."""

from __future__ import annotations

import math

import pytest
import torch

from reproduce.errors import ReproduceError
from reproduce.privacy.clipping import (
    CLIPPING_RULES,
    AdaptiveQuantileClipping,
    automatic_clip_factors,
    flat_clip_factors,
    geometric_clip_update,
    make_clipping_rule,
    noised_unclipped_fraction,
)
from tests.privacy._tiny import G

NORMS = G.norm(dim=1)  # 5, 1, 3


def test_flat_factors_by_hand():
    assert torch.allclose(
        flat_clip_factors(NORMS, 2.0), torch.tensor([2 / (5 + 1e-6), 1.0, 2 / (3 + 1e-6)]), rtol=0, atol=1e-7
    )


def test_automatic_factors_by_hand():
    assert torch.allclose(
        automatic_clip_factors(NORMS, 2.0, gamma=0.01), torch.tensor([2 / 5.01, 2 / 1.01, 2 / 3.01]), rtol=0, atol=1e-7
    )


def test_automatic_scales_every_sample_strictly_below_the_clipping_norm():
    g = torch.cat([G, torch.zeros(1, 3), 1e6 * G[:1], 1e-6 * G[1:2]]).double()
    scaled = automatic_clip_factors(g.norm(dim=1), 2.0, gamma=0.01)[:, None] * g
    assert (scaled.norm(dim=1) < 2.0).all()
    # The sample of norm 1: 2 * 1 / 1.01 - scaled up, not clipped, as normalisation does.
    assert scaled.norm(dim=1)[1].item() == pytest.approx(2 / 1.01, rel=1e-7)  # G is float32


def test_noised_unclipped_fraction_is_centred_over_the_expected_batch_size():
    # 2 of 3 unclipped, noise 0.5, B = 4: ((2 - 3/2) + 0.5) / 4 + 1/2 = 0.75 (uncentred would be 0.625).
    assert noised_unclipped_fraction(unclipped=2, batch_size=3, count_noise=0.5, expected_batch_size=4) == 0.75
    assert noised_unclipped_fraction(unclipped=3, batch_size=3, count_noise=9.0, expected_batch_size=4) == 1.0
    assert noised_unclipped_fraction(unclipped=0, batch_size=3, count_noise=-9.0, expected_batch_size=4) == 0.0
    # Empty Poisson batch: the noise alone moves the estimate around 1/2.
    assert noised_unclipped_fraction(unclipped=0, batch_size=0, count_noise=0.4, expected_batch_size=4) == 0.6


def test_geometric_update_by_hand():
    assert geometric_clip_update(2.0, unclipped_fraction=0.75, target_quantile=0.5, learning_rate=0.2) == pytest.approx(
        2 * math.exp(-0.05), rel=1e-15
    )
    assert geometric_clip_update(2.0, unclipped_fraction=0.5, target_quantile=0.5, learning_rate=0.2) == 2.0


def test_adaptive_rule_counts_across_micro_batches_and_clears_at_the_step():
    rule = AdaptiveQuantileClipping(target_quantile=0.5, learning_rate=0.2, count_noise_std=1.0)
    rule.observe(NORMS[:2], 2.0)  # 5, 1: one unclipped
    rule.observe(NORMS[2:], 2.0)  # 3: none
    assert (rule.unclipped, rule.batch_size) == (1, 3)
    c = rule.next_max_grad_norm(2.0, count_noise=0.3, expected_batch_size=4)
    # b~ = ((1 - 1.5) + 0.3) / 4 + 0.5 = 0.45; C = 2 exp(-0.2 (0.45 - 0.5)) = 2 exp(0.01)
    assert c == pytest.approx(2 * math.exp(0.01), rel=1e-15)
    assert (rule.unclipped, rule.batch_size) == (0, 0)


def test_a_norm_equal_to_the_clipping_norm_counts_as_unclipped():
    rule = AdaptiveQuantileClipping(target_quantile=0.5, learning_rate=0.2, count_noise_std=1.0)
    rule.observe(torch.tensor([2.0, 2.0 + 1e-6]), 2.0)
    assert rule.unclipped == 1


def test_registry_builds_each_rule_and_refuses_unknown_or_incomplete():
    assert set(CLIPPING_RULES) == {"flat", "automatic", "adaptive"}
    assert make_clipping_rule("automatic", gamma=0.01).gamma == 0.01
    assert make_clipping_rule("flat").name == "flat"
    with pytest.raises(ReproduceError, match="unknown clipping rule 'auto'.*adaptive, automatic, flat"):
        make_clipping_rule("auto")
    with pytest.raises(ReproduceError, match="adaptive"):
        make_clipping_rule("adaptive", target_quantile=0.5, learning_rate=0.2)


@pytest.mark.parametrize("params", [dict(count_noise_std=0.0), dict(count_noise_std=1.0, target_quantile=1.5)])
def test_adaptive_rule_refuses_a_noiseless_count_or_a_quantile_outside_0_1(params):
    with pytest.raises(ReproduceError):
        AdaptiveQuantileClipping(**{"target_quantile": 0.5, "learning_rate": 0.2, **params})


def test_automatic_rule_refuses_gamma_zero():
    with pytest.raises(ReproduceError, match="gamma > 0"):
        make_clipping_rule("automatic", gamma=0.0)
