"""Augmentation multiplicity: K distinct views, view-averaged per-sample gradients clipped after averaging."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer

from reproduce.data.augment import augment_views, average_view_grad_samples
from reproduce.models import build_model


@pytest.mark.parametrize("kind", ["medmnist", "cifar"])
def test_views_are_distinct_and_grouped_per_sample(kind):
    n, K = 100, 4
    x = torch.rand(n, 3, 28, 28)
    views = augment_views(x, K, kind=kind, generator=torch.Generator().manual_seed(0))
    assert views.shape == (n * K, 3, 28, 28)
    same, pairs = 0, 0
    for i in range(n):
        group = views[K * i: K * i + K]
        for a in range(K):
            for b in range(a + 1, K):
                same += torch.equal(group[a], group[b])
                pairs += 1
        # Each view is a rearrangement of its own sample's pixels (plus zero padding), not another sample's.
        assert group.sum(dim=(1, 2, 3)).max() <= x[i].sum() + 1e-3
    # Independent views coincide only by chance (1 in 162 for cifar, 1 in 200 for medmnist);
    # the authors' `[aug(x)] * k` defect would make every pair identical.
    assert same / pairs < 0.03, same


@pytest.mark.parametrize("kind", ["medmnist", "cifar"])
def test_views_do_not_depend_on_how_the_batch_is_split(kind):
    """Micro-batches (physical_batch_size) must give every sample the views the whole batch gives it."""
    x = torch.rand(11, 3, 28, 28)
    whole = augment_views(x, 3, kind=kind, generator=torch.Generator().manual_seed(1))
    gen = torch.Generator().manual_seed(1)
    parts = torch.cat([augment_views(x[s:s + 4], 3, kind=kind, generator=gen) for s in range(0, 11, 4)])
    assert torch.equal(whole, parts)


def test_multiplicity_one_is_identity():
    x = torch.rand(3, 3, 28, 28)
    assert augment_views(x, 1, kind="medmnist", generator=torch.Generator()) is x


def test_dp_update_clips_the_view_average_per_sample():
    torch.manual_seed(0)
    model = build_model(group="e", widths=(4, 4, 8), in_channels=3, num_classes=8, seed=0).double()
    B, K, C = 4, 3, 0.05
    views = torch.randn(B * K, 3, 28, 28, dtype=torch.float64)
    y = torch.randint(0, 8, (B,))
    yk = y.repeat_interleave(K)
    # Brute force: g_i = mean_k grad(loss(view_ik)); clip g_i over all parameters; average over B.
    want = [torch.zeros_like(p) for p in model.parameters()]
    for i in range(B):
        model.zero_grad()
        F.cross_entropy(model(views[i * K:(i + 1) * K]), yk[i * K:(i + 1) * K]).backward()
        g = [p.grad.detach().clone() for p in model.parameters()]
        norm = math.sqrt(sum(float(t.pow(2).sum()) for t in g))
        for w, t in zip(want, g):
            w += min(1.0, C / (norm + 1e-6)) * t / B
    gsm = GradSampleModule(model, loss_reduction="mean")
    opt = DPOptimizer(torch.optim.SGD(model.parameters(), lr=1.0), noise_multiplier=0.0, max_grad_norm=C,
                      expected_batch_size=B)
    opt.zero_grad()
    F.cross_entropy(gsm(views), yk).backward()
    average_view_grad_samples(list(model.parameters()), K)
    opt.pre_step()
    for w, p in zip(want, model.parameters()):
        assert torch.allclose(p.grad, w, rtol=1e-7, atol=1e-12)
