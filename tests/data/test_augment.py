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


def _boolean_mask_views(x, multiplicity, *, kind, generator):
    """The views as selected by host boolean masks before the device path (kept as the reference)."""
    from reproduce.data.augment import _crop, _draws
    rep = x.repeat_interleave(multiplicity, dim=0)
    if kind == "medmnist":
        k, flip, dy, dx = _draws(len(rep), [4, 2, 5, 5], generator)
        out = rep.clone()
        for r in range(4):
            if (k == r).any():
                out[k == r] = torch.rot90(rep[k == r], r, dims=(2, 3))
        out[flip.bool()] = out[flip.bool()].flip(3)
        return _crop(out, 2, dy, dx)
    flip, dy, dx = _draws(len(rep), [2, 9, 9], generator)
    rep = rep.clone()
    rep[flip.bool()] = rep[flip.bool()].flip(3)
    return _crop(rep, 4, dy, dx)


@pytest.mark.parametrize("kind", ["medmnist", "cifar"])
def test_views_selected_by_index_are_the_boolean_mask_views_bit_for_bit(kind):
    """The device path selects rows by index (no host read-back of a mask); on the CPU the views are
    the ones the masks gave, so CPU results do not move."""
    x = torch.rand(13, 3, 28, 28)
    got = augment_views(x, 4, kind=kind, generator=torch.Generator().manual_seed(5))
    want = _boolean_mask_views(x, 4, kind=kind, generator=torch.Generator().manual_seed(5))
    assert torch.equal(got, want)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
@pytest.mark.parametrize("kind", ["medmnist", "cifar"])
def test_views_on_cuda_are_the_cpu_views_and_do_not_depend_on_micro_batching(kind):
    x = torch.rand(11, 3, 28, 28)
    cpu = augment_views(x, 3, kind=kind, generator=torch.Generator().manual_seed(1))
    gen = torch.Generator().manual_seed(1)
    parts = torch.cat([augment_views(x[s:s + 4].cuda(), 3, kind=kind, generator=gen) for s in range(0, 11, 4)])
    assert parts.device.type == "cuda"
    assert torch.equal(parts.cpu(), cpu)   # permutations and zero padding only: exact on any device


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_views_refuse_a_cuda_generator():
    with pytest.raises(ValueError, match="CPU generator"):
        augment_views(torch.rand(2, 3, 28, 28).cuda(), 2, kind="cifar", generator=torch.Generator("cuda"))
