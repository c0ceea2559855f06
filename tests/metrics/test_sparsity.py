"""l0_eps gradient sparsity against hand counts."""

import math

import numpy as np
import pytest
import torch

from reproduce.metrics import l0_eps

G = [0.0, 1e-6, -2e-6, 1e-5, 0.1, -1.0]  # |g| < 1e-5: 0, 1e-6, -2e-6 (1e-5 itself not, strict)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_hand_tensor(dtype):
    assert l0_eps(torch.tensor(G, dtype=dtype)) == 0.5
    assert l0_eps(torch.tensor(G, dtype=dtype).reshape(2, 3)) == 0.5


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_hand_numpy(dtype):
    assert l0_eps(np.array(G, dtype=dtype)) == 0.5


def test_list_of_tensors_pooled():
    # 4 zeros + 3 ones -> 4/7
    assert l0_eps([torch.zeros(2, 2), torch.ones(3)]) == pytest.approx(4 / 7)
    assert l0_eps((np.zeros(1), torch.full((3,), 1e-6))) == 1.0


def test_custom_eps_and_extremes():
    assert l0_eps(torch.tensor(G), eps=0.5) == pytest.approx(5 / 6)
    assert l0_eps(torch.zeros(10)) == 1.0
    assert l0_eps(torch.ones(10)) == 0.0
    assert l0_eps(torch.tensor([3e-6])) == 1.0  # single entry
    assert l0_eps(torch.tensor(0.0)) == 1.0  # 0-d tensor


def test_nan_is_not_sparse():
    assert l0_eps(torch.tensor([math.nan, 0.0])) == 0.5


def test_does_not_touch_autograd_graph():
    w = torch.zeros(3, requires_grad=True)
    assert l0_eps(w * 2) == 1.0


def test_errors():
    with pytest.raises(ValueError):
        l0_eps([])
    with pytest.raises(ValueError):
        l0_eps([torch.zeros(2), None])
    with pytest.raises(ValueError):
        l0_eps(torch.zeros(0))
    with pytest.raises(ValueError):
        l0_eps(torch.zeros(2), eps=0.0)
