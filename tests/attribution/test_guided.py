"""The guided rule: captum's GuidedBackprop on ReLU models, hand values for Mish, gates, FourierELU."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from captum.attr import GuidedBackprop
from escnn import gspaces
from escnn import nn as enn
from torch import nn

from reproduce.attribution.guided import guided_backprop, guided_grad_cam, guided_rules
from reproduce.models.equivariant_ops import EscnnOp, InducedGate
from tests.attribution.conftest import images


def _relu_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 6, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(24, 8),
        nn.ReLU(),
        nn.Linear(8, 5),
    ).eval()


def _plain_gradient(model, x, targets):
    x = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model(x).gather(1, targets[:, None]).sum(), x)
    return g


@pytest.mark.filterwarnings("ignore:.*(required_grads|Setting backward hooks).*:UserWarning")  # captum's notices
def test_relu_model_equals_captum_guided_backprop():
    model, x, targets = _relu_cnn(), images(3, 12), torch.tensor([0, 2, 4])
    ours = guided_backprop(model, x, targets)
    theirs = GuidedBackprop(model).attribute(x, target=targets.tolist())
    assert ours.abs().max() > 0
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-9)
    # and the rule is not a no-op: the plain gradient differs
    assert (ours - _plain_gradient(model, x, targets)).abs().max() > 1e-3 * ours.abs().max()


def test_hooks_are_removed_afterwards():
    model, x, targets = _relu_cnn(), images(2, 12), torch.tensor([1, 3])
    guided_backprop(model, x, targets)
    assert all(not m._forward_pre_hooks and not m._backward_hooks for m in model.modules())
    x1 = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model(x1).gather(1, targets[:, None]).sum(), x1)
    torch.testing.assert_close(g, _plain_gradient(model, x, targets))


def test_mish_rule_by_hand():
    # f(x) = sum_i w_i mish(x_i): guided gradient relu(w * mish'(x)), mish' written out by hand
    w = torch.tensor([1.0, -1.0, 1.0, -1.0, 2.0, -2.0], dtype=torch.float64)
    x = torch.tensor([1.5, 1.5, -0.5, -0.5, -3.0, -3.0], dtype=torch.float64)
    model = nn.Sequential(nn.Mish())
    forward = lambda t: (model(t) * w).sum(dim=1, keepdim=True)  # noqa: E731
    wrapper = _Forward(model, forward)
    sp = torch.log1p(torch.exp(x))
    dmish = torch.tanh(sp) + x * torch.sigmoid(x) / torch.cosh(sp) ** 2
    got = guided_backprop(wrapper, x[None], torch.tensor([0]))[0]
    torch.testing.assert_close(got, torch.clamp(w * dmish, min=0), rtol=1e-12, atol=1e-12)
    # x = -3 lies where Mish decreases: there the negative weight's signal passes, the positive's not
    assert got[4] == 0 and got[5] > 0


class _Forward(nn.Module):
    def __init__(self, module, forward):
        super().__init__()
        self.module, self._f = module, forward

    def forward(self, x):
        return self._f(x)


def test_induced_gate_rule_clamps_gates_only():
    gate = InducedGate(fields=1, cosets=2, subfield_size=2)
    x = torch.tensor([0.3, -1.0, 1.0, -2.0, 0.5, 0.7], dtype=torch.float64)[None, :, None, None]
    c = torch.tensor([1.0, 1.0, -1.0, 0.5], dtype=torch.float64)  # weights of the 4 gated outputs
    model = _Forward(gate, lambda t: (gate(t)[:, :, 0, 0] * c).sum(dim=1, keepdim=True))
    got = guided_backprop(model, x, torch.tensor([0]))[0, :, 0, 0]
    g, v = x[0, :2, 0, 0], x[0, 2:, 0, 0].reshape(2, 2)
    sig, cv = torch.sigmoid(g), c.reshape(2, 2)
    gated_grad = (cv * sig[:, None]).reshape(-1)  # unclamped (vector sub-fields)
    gate_grad = torch.clamp((cv * v).sum(dim=1) * sig * (1 - sig), min=0)  # clamped (scalars)
    assert (cv * v).sum(dim=1).min() < 0 and gated_grad.min() < 0  # both rules are exercised
    torch.testing.assert_close(got, torch.cat([gate_grad, gated_grad]), rtol=1e-12, atol=1e-12)


def test_fourier_elu_rule_clamps_on_the_sampled_rotations():
    act = enn.FourierELU(gspaces.rot2dOnR2(-1), 1, irreps=[(0,), (1,), (2,)], type="regular", N=8, inplace=False)
    op = EscnnOp(act).double()
    x_hat = torch.randn(1, act.in_type.size, 1, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    c = torch.randn(act.out_type.size, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    model = _Forward(op, lambda t: (op(t)[:, :, 0, 0] * c).sum(dim=1, keepdim=True))
    got = guided_backprop(model, x_hat, torch.tensor([0]))[0, :, 0, 0]
    a, a_inv = act.A.double(), act.Ainv.double()  # samples = A @ coefficients
    samples = a @ x_hat[0, :, 0, 0]
    upstream = a_inv.T @ c  # gradient at the ELU's output
    dsamples = torch.clamp(upstream * torch.where(samples > 0, 1.0, torch.exp(samples)), min=0)
    assert (upstream < 0).any() and (upstream > 0).any()
    torch.testing.assert_close(got, a.T @ dsamples, rtol=1e-10, atol=1e-12)
    assert op.module._function is F.elu  # the wrapper was undone


def test_model_without_known_nonlinearity_is_refused():
    with pytest.raises(ValueError, match="no non-linearity"):
        with guided_rules(nn.Sequential(nn.Linear(2, 2), nn.Tanh())):
            pass


def test_guided_grad_cam_is_the_product():
    g, cam = torch.randn(2, 3, 4, 4), torch.rand(2, 4, 4)
    torch.testing.assert_close(guided_grad_cam(g, cam)[:, 1], g[:, 1] * cam)
