"""Gradient-weight alignment: cosine against hand values, summary against numpy/scipy."""

import math

import numpy as np
import pytest
import scipy.stats
import torch

from reproduce.metrics import (
    alignment_summary,
    final_layer_cosines,
    gradient_weight_alignment,
    linear_ce_per_sample_grads,
    per_sample_cosine,
)


def test_cosine_hand():
    w = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # flattened [1,0,0,1], norm sqrt 2
    g = torch.tensor(
        [
            [[1.0, 0.0], [0.0, 1.0]],  # parallel -> 1
            [[0.0, 1.0], [1.0, 0.0]],  # orthogonal -> 0
            [[-2.0, 0.0], [0.0, -2.0]],  # anti-parallel -> -1
            [[1.0, 1.0], [0.0, 0.0]],  # dot 1 / (sqrt2 * sqrt2) = 0.5
            [[0.0, 0.0], [0.0, 0.0]],  # zero gradient -> undefined
        ]
    )
    c = per_sample_cosine(g, w)
    assert c[:4] == pytest.approx([1.0, 0.0, -1.0, 0.5])
    assert math.isnan(c[4])


def test_cosine_weight_and_bias_concatenated():
    # w = [W | b] = [1, 2, 2] (norm 3); g = [2, 0 | 1] (norm sqrt5); dot 2 + 2 = 4
    W, b = torch.tensor([[1.0, 2.0]]), torch.tensor([2.0])
    gW, gb = torch.tensor([[[2.0, 0.0]]]), torch.tensor([[1.0]])
    assert per_sample_cosine([gW, gb], [W, b]) == pytest.approx([4 / (3 * math.sqrt(5))])
    # numpy inputs work the same
    assert per_sample_cosine([gW.numpy(), gb.numpy()], [W.numpy(), b.numpy()]) == pytest.approx(
        [4 / (3 * math.sqrt(5))]
    )


def test_cosine_zero_weights_and_shape_errors():
    assert np.all(np.isnan(per_sample_cosine(torch.ones(3, 2), torch.zeros(2))))
    with pytest.raises(ValueError):
        per_sample_cosine(torch.ones(3, 2), torch.ones(3))
    with pytest.raises(ValueError):
        per_sample_cosine([torch.ones(3, 2)], [torch.ones(2), torch.ones(1)])


def test_summary_hand_leptokurtic():
    # c = [1, 0 x 9]: m = .1, m2 = (.81 + 9*.01)/10 = .09, m4 = (.6561 + 9*.0001)/10 = .0657,
    # k = .0657/.0081 - 3 = 46/9, GWA = .1 / (46/9 + 1.2) = .1 * 45 / 284
    s = alignment_summary(np.array([1.0] + [0.0] * 9))
    assert s.mean == pytest.approx(0.1)
    assert s.excess_kurtosis == pytest.approx(46 / 9)
    assert s.kurtosis_corrected_mean == pytest.approx(4.5 / 284)
    assert s.std == pytest.approx(0.3)
    assert (s.n, s.n_undefined) == (10, 0)


def test_summary_hand_platykurtic():
    # c = [1, 0, 0, 0]: m2 = .1875, m4 = .08203125, k = 7/3 - 3 = -2/3, GWA = .25 / (8/15) = 15/32
    s = alignment_summary([1.0, 0.0, 0.0, 0.0])
    assert s.excess_kurtosis == pytest.approx(-2 / 3)
    assert s.kurtosis_corrected_mean == pytest.approx(15 / 32)


def test_summary_against_numpy_and_scipy():
    rng = np.random.default_rng(0)
    for c in (rng.normal(0.2, 0.1, 50), np.clip(0.1 + 0.1 * rng.standard_t(4, 200), -1, 1)):
        s = alignment_summary(torch.tensor(c))
        k = scipy.stats.kurtosis(c)  # the authors' call: Fisher (excess), biased
        assert s.mean == pytest.approx(np.mean(c))
        assert s.excess_kurtosis == pytest.approx(k)
        assert s.kurtosis_corrected_mean == pytest.approx(np.mean(c) / (k + 1.2))
        assert s.std == pytest.approx(np.std(c))


def test_summary_edge_cases():
    one = alignment_summary([0.4])
    assert (one.mean, one.kurtosis_corrected_mean, one.excess_kurtosis, one.n) == (0.4, None, None, 1)
    const = alignment_summary([0.1] * 5)
    assert const.excess_kurtosis is None and const.kurtosis_corrected_mean is None and const.mean == pytest.approx(0.1)
    # two-point distribution: k = -2, below the pole at -1.2 -> GWA undefined, not a sign flip
    two = alignment_summary([0.0, 1.0])
    assert two.excess_kurtosis == pytest.approx(-2.0) and two.kurtosis_corrected_mean is None
    with_nan = alignment_summary([1.0, math.nan, 0.0, 0.0, 0.0])
    assert with_nan.mean == 0.25 and (with_nan.n, with_nan.n_undefined) == (4, 1)
    none = alignment_summary([math.nan, math.nan])
    assert none.mean is None and none.kurtosis_corrected_mean is None and none.n_undefined == 2


def test_final_layer_cosines_are_update_direction_against_the_weight_only():
    """Against autograd: cos(-dL_i/dW, W), the bias left out (the authors' reference code)."""
    torch.manual_seed(1)
    layer = torch.nn.Linear(6, 4).double()
    h = torch.randn(7, 6, dtype=torch.float64)
    y = torch.tensor([0, 3, 1, 2, 2, 0, 1])
    got = final_layer_cosines(h, layer(h), y, layer.weight)
    for i in range(7):
        layer.zero_grad()
        torch.nn.functional.cross_entropy(layer(h[i : i + 1]), y[i : i + 1]).backward()
        update, w = -layer.weight.grad.ravel(), layer.weight.detach().ravel()
        assert got[i] == pytest.approx((update @ w / (update.norm() * w.norm())).item(), rel=1e-12)


def test_linear_ce_per_sample_grads_match_autograd():
    torch.manual_seed(0)
    layer = torch.nn.Linear(4, 3).double()
    h = torch.randn(5, 4, dtype=torch.float64)
    y = torch.tensor([0, 2, 1, 1, 0])
    gW, gb = linear_ce_per_sample_grads(h, layer(h), y)
    assert gW.shape == (5, 3, 4) and gb.shape == (5, 3)
    for i in range(5):
        layer.zero_grad()
        torch.nn.functional.cross_entropy(layer(h[i : i + 1]), y[i : i + 1]).backward()
        assert torch.allclose(gW[i], layer.weight.grad) and torch.allclose(gb[i], layer.bias.grad)
    summary = gradient_weight_alignment([gW, gb], [layer.weight, layer.bias])
    # explicit cosines from the autograd gradients
    w = torch.cat([layer.weight.detach().ravel(), layer.bias.detach().ravel()])
    g = torch.cat([gW.reshape(5, -1), gb], dim=1)
    expected = (g @ w / (g.norm(dim=1) * w.norm())).numpy()
    assert summary.mean == pytest.approx(expected.mean())
    assert summary.n == 5


def test_sign_convention_flips_means_only():
    rng = np.random.default_rng(3)
    g, w = rng.normal(size=(8, 6)), rng.normal(size=6)
    a, b = gradient_weight_alignment(g, w), gradient_weight_alignment(-g, w)
    assert b.mean == pytest.approx(-a.mean)
    assert b.kurtosis_corrected_mean == pytest.approx(-a.kurtosis_corrected_mean)
    assert b.excess_kurtosis == pytest.approx(a.excess_kurtosis)
    # invariant to positive per-sample rescaling (e.g. Opacus' loss-reduction scaling)
    assert gradient_weight_alignment(g * 7.0, w).mean == pytest.approx(a.mean)
