"""Every per-sample rule the suite calls is exact for any memory layout of its input and output gradient.

Ground truth: one autograd call per sample (a single-layer "model", so nothing but the rule is
tested). Layouts: NCHW-contiguous, channels-last (what K-view crops and some oneDNN outputs are),
and a non-contiguous slice. The opacus case documents the library bug the suite guards against.
"""

from __future__ import annotations

import pytest
import torch
from escnn import gspaces
from escnn import nn as enn
from opacus import GradSampleModule
from opacus.grad_sample.conv import compute_conv_grad_sample as opacus_conv_rule
from torch import nn

import reproduce.privacy.grad_samplers  # noqa: F401  (registers the suite's rules)
from reproduce.models.escnn_conv import EquivariantConv2d
from reproduce.privacy.grad_samplers import rule_for, unfold


def channels_last(t):
    return t.contiguous(memory_format=torch.channels_last)


def strided(t):
    """Same values, non-contiguous: every other element of the last axis of a twice-as-wide tensor."""
    return torch.stack([t, torch.zeros_like(t)], dim=-1).flatten(-2)[..., ::2]


LAYOUTS = {"contiguous": lambda t: t.contiguous(), "channels_last": channels_last, "strided": strided}


def layers():
    torch.manual_seed(0)
    gs = gspaces.rot2dOnR2(4)
    t_in = enn.FieldType(gs, [gs.trivial_repr] * 3)
    t_out = enn.FieldType(gs, [gs.regular_repr] * 2)
    return {
        "Conv2d": nn.Conv2d(3, 5, 3, padding=1, bias=True),
        "Conv2d stride 2, 5x3 kernel": nn.Conv2d(3, 4, (5, 3), stride=2, padding=(2, 1), dilation=1),
        "Conv2d 16->16 (grouped-conv path)": nn.Conv2d(16, 16, 3, padding=1, bias=False),
        "Conv2d groups=2 (opacus's rule)": nn.Conv2d(4, 4, 3, padding=1, groups=2),
        "GroupNorm": nn.GroupNorm(2, 4),
        "EquivariantConv2d": EquivariantConv2d(t_in, t_out, 3, padding=1, standardise=True),
    }


def in_channels(layer):
    if isinstance(layer, EquivariantConv2d):
        return layer.in_type.size
    return layer.num_channels if isinstance(layer, nn.GroupNorm) else layer.in_channels


def per_sample_autograd(layer, x, g):
    """Gradient of <layer(x_i), g_i> for each sample i: the per-sample gradient for output gradient g."""
    params = [p for p in layer.parameters() if p.requires_grad]
    out = [[] for _ in params]
    for i in range(len(x)):
        y = layer(x[i : i + 1].contiguous())
        for acc, grad in zip(out, torch.autograd.grad((y * g[i : i + 1]).sum(), params)):
            acc.append(grad)
    return {p: torch.stack(o) for p, o in zip(params, out)}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", list(layers()))
def test_registered_rule_exact_for_any_layout(name, layout):
    layer = layers()[name].double()
    gen = torch.Generator().manual_seed(1)
    side = 12 if "16->16" in name else 7
    x = torch.randn(5, in_channels(layer), side, side, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        y = layer(x)
    g = torch.randn(y.shape, generator=gen, dtype=torch.float64)
    expected = per_sample_autograd(layer, x, g)
    got = rule_for(type(layer))(layer, [LAYOUTS[layout](x)], LAYOUTS[layout](g))
    assert set(got) == set(expected)
    for p, e in expected.items():
        assert got[p].shape == e.shape
        assert torch.allclose(got[p], e, rtol=1e-10, atol=1e-12), f"{name}: {layout}"


def test_opacus_conv2d_rule_is_wrong_on_channels_last_which_is_why_the_suite_wraps_it():
    """opacus 1.6's own rule, unwrapped: exact on NCHW, wrong on channels-last (the bug this guards)."""
    layer = nn.Conv2d(3, 4, 3, padding=1).double()
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    g = torch.randn(3, 4, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    expected = per_sample_autograd(layer, x, g)[layer.weight]
    assert torch.allclose(opacus_conv_rule(layer, [x], g)[layer.weight], expected)
    wrong = opacus_conv_rule(layer, [channels_last(x)], channels_last(g))[layer.weight]
    assert (wrong - expected).norm() / expected.norm() > 0.1
    assert GradSampleModule.GRAD_SAMPLERS[nn.Conv2d].layout_safe  # what training actually calls


@pytest.mark.parametrize("layout", LAYOUTS)
def test_unfold_equals_torch_unfold_for_any_layout(layout):
    layer = nn.Conv2d(3, 4, (3, 5), stride=(2, 1), padding=(1, 2), dilation=(1, 2))
    x = torch.randn(4, 3, 9, 11)
    expected = torch.nn.functional.unfold(
        x, layer.kernel_size, dilation=layer.dilation, padding=layer.padding, stride=layer.stride
    )
    assert torch.equal(unfold(LAYOUTS[layout](x), layer), expected)


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_conv2d_with_non_zero_padding_mode_is_refused(mode):
    """Both rules zero-pad, so reflect/replicate/circular padding would get wrong per-sample gradients."""
    from reproduce.errors import ReproduceError
    from reproduce.privacy.exactness import exactness_problems

    layer = nn.Conv2d(3, 4, 3, padding=1, padding_mode=mode)
    assert any("padding_mode" in p for p in exactness_problems(nn.Sequential(layer)))
    with pytest.raises(ReproduceError, match="padding_mode"):
        rule_for(nn.Conv2d)(layer, [torch.randn(2, 3, 5, 5)], torch.randn(2, 4, 5, 5))


@pytest.mark.parametrize(
    "layer",
    [nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding="same", groups=2)],
    ids=["covered", "opacus fallback"],
)
def test_conv2d_rule_on_an_empty_batch_has_zero_samples(layer):
    out = rule_for(nn.Conv2d)(layer, [torch.randn(0, layer.in_channels, 5, 5)], torch.randn(0, 4, 5, 5))
    assert all(g.shape == (0, *p.shape) for p, g in out.items())


@pytest.mark.parametrize("shape", [(6, 8, 28, 28), (5, 4, 3, 3), (4, 6), (3, 4, 5)])
def test_group_norm_rule_is_opacus_arithmetic_bit_for_bit(shape):
    """The suite's GroupNorm rule only saves a temporary: the same numbers as opacus's, so trained
    weights do not move (and an [n, C] input, without positions, is not summed over channels)."""
    from opacus.grad_sample.group_norm import compute_group_norm_grad_sample as opacus_rule

    layer = nn.GroupNorm(2, shape[1])
    gen = torch.Generator().manual_seed(2)
    x, g = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)
    expected = opacus_rule(layer, [x], g)
    got = rule_for(nn.GroupNorm)(layer, [x], g)
    assert rule_for(nn.GroupNorm).__wrapped__ is not opacus_rule
    for p in (layer.weight, layer.bias):
        assert torch.equal(got[p], expected[p])
