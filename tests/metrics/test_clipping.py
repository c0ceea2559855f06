"""Clipping diagnostics against hand values."""

from __future__ import annotations

import pytest
import torch

from reproduce.metrics.clipping import (
    StepRecord,
    clipping_diagnostics,
    cosine,
    flatten,
    norm_quantiles,
    norm_ratio,
    share_clipped,
    update_cosine,
)

NORMS = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])


def _record(**kw):
    base = dict(
        norms=NORMS,
        unclipped_sum=torch.tensor([3.0, 4.0]),
        clipped_sum=torch.tensor([0.0, 2.0]),
        noise=torch.tensor([1.5, 0.0]),
        descent=torch.tensor([1.0, 0.0]),
        max_grad_norm=2.5,
    )
    return StepRecord(**{**base, **kw})


def test_share_clipped_counts_norms_strictly_above_C():
    assert share_clipped(NORMS, 2.5) == 0.6
    assert share_clipped(NORMS, 3.0) == 0.4  # a norm equal to C is not clipped
    assert share_clipped(torch.zeros(0), 1.0) is None


def test_norm_quantiles_interpolate_linearly_between_order_statistics():
    # positions (n - 1) q = 0.4, 2, 3.6 of 1..5: 1.4, 3, 4.6
    assert norm_quantiles(NORMS[[4, 0, 3, 1, 2]]) == pytest.approx((1.4, 3.0, 4.6), rel=1e-12)
    assert norm_quantiles(torch.zeros(0)) == (None, None, None)


def test_cosine_and_norm_ratio_by_hand():
    assert cosine(torch.tensor([0.0, 2.0]), torch.tensor([3.0, 4.0])) == pytest.approx(0.8)
    assert norm_ratio(torch.tensor([0.0, 2.0]), torch.tensor([3.0, 4.0])) == pytest.approx(0.4)
    assert cosine(torch.zeros(2), torch.tensor([3.0, 4.0])) is None
    assert norm_ratio(torch.ones(2), torch.zeros(2)) is None


def test_step_diagnostics_by_hand():
    d = clipping_diagnostics(_record())
    assert d.as_row() == pytest.approx(
        {
            "share_clipped": 0.6,
            "grad_norm_q10": 1.4,
            "grad_norm_q50": 3.0,
            "grad_norm_q90": 4.6,
            "clip_bias_cosine": 0.8,  # (0, 2) . (3, 4) / (2 * 5)
            "clip_bias_norm_ratio": 0.4,  # 2 / 5
            "noise_to_signal": 0.75,  # 1.5 / 2
            "update_cosine": 0.6,  # (1, 0) . (3, 4) / 5
            "max_grad_norm": 2.5,
        }
    )


def test_an_empty_noise_only_step_has_undefined_diagnostics_but_its_C():
    d = clipping_diagnostics(_record(norms=torch.zeros(0), unclipped_sum=torch.zeros(2), clipped_sum=torch.zeros(2)))
    row = d.as_row()
    assert row.pop("max_grad_norm") == 2.5
    assert set(row.values()) == {None}


def test_flatten_concatenates_parameters_in_order():
    assert flatten([torch.tensor([[1.0, 2.0]]), torch.tensor([3.0])]).tolist() == [1.0, 2.0, 3.0]


def test_update_cosine_of_a_step_by_hand():
    before = [torch.tensor([1.0, 1.0]), torch.tensor([2.0])]
    after = [torch.tensor([0.0, 1.0]), torch.tensor([2.0])]  # descent (1, 0, 0)
    gradient = [torch.tensor([1.0, 1.0]), torch.tensor([0.0])]  # cos = 1 / sqrt(2)
    assert update_cosine(before=before, after=after, gradient=gradient) == pytest.approx(2**-0.5, rel=1e-15)
    assert update_cosine(before=before, after=before, gradient=gradient) is None  # no step taken
