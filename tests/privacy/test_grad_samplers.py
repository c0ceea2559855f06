"""Per-sample gradients of EquivariantConv2d: opacus hooks mode and the output-gradient engine
against a brute-force loop with one backward per sample."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from escnn import gspaces
from escnn import nn as enn
from opacus import GradSampleModule, PrivacyEngine
from opacus.optimizers import DPOptimizer
from torch import nn

from reproduce.models.escnn_conv import EquivariantConv2d
from reproduce.privacy.fast_engine import OutputGradientEngine
from reproduce.privacy.grad_samplers import basis_transpose, coefficient_grad_sample, standardisation_vjp, unfold

# opacus' hooks warn that the first layer's input needs no gradient; expected here.
pytestmark = [
    pytest.mark.filterwarnings("ignore:Full backward hook is firing"),
    pytest.mark.filterwarnings("ignore:Secure RNG turned off"),
]

BATCH = 6
TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-10}


def field_types(group: str):
    """(input, hidden, output) field types of a small model on ``group``."""
    if group == "O2":
        gs = gspaces.flipRot2dOnR2(-1, maximum_frequency=2)
        bl = gs.fibergroup.bl_regular_representation(1)
        hidden = [bl, gs.irrep(1, 1), gs.trivial_repr]
        out = [bl, gs.irrep(1, 2), gs.irrep(1, 0), gs.trivial_repr]
    elif group == "SO2":
        gs = gspaces.rot2dOnR2(-1, maximum_frequency=2)
        bl = gs.fibergroup.bl_regular_representation(2)
        hidden = [bl, gs.irrep(1), gs.trivial_repr]
        out = [bl, gs.irrep(2), gs.trivial_repr]
    else:
        gs = {
            "C1": gspaces.rot2dOnR2(1),
            "C4": gspaces.rot2dOnR2(4),
            "D4": gspaces.flipRot2dOnR2(4),
            "C16": gspaces.rot2dOnR2(16),
        }[group]
        hidden, out = [gs.regular_repr] * 2, [gs.regular_repr] * 2
    return (enn.FieldType(gs, [gs.trivial_repr] * 3), enn.FieldType(gs, hidden), enn.FieldType(gs, out))


class SmallEquivariantNet(nn.Module):
    """conv (12x12: grouped-conv rule; weight standardisation) -> pool -> conv (6x6: unfold rule) -> linear head."""

    def __init__(self, group: str, n_classes: int = 3):
        super().__init__()
        np.random.seed(0)  # escnn's D_N and O(2) bases draw from numpy's global RNG
        torch.manual_seed(0)
        t_in, t_hidden, t_out = field_types(group)
        self.conv1 = EquivariantConv2d(t_in, t_hidden, 3, padding=1, standardise=True)
        self.conv2 = EquivariantConv2d(t_hidden, t_out, 3, padding=1)
        self.head = nn.Linear(t_out.size, n_classes)

    def forward(self, x):
        x = F.group_norm(torch.tanh(self.conv1(x)), 1)  # parameter-free, per sample
        x = F.avg_pool2d(x, 2)
        x = torch.tanh(self.conv2(x))
        return self.head(x.mean(dim=(2, 3)))


GROUPS = ["C1", "C4", "D4", "C16", "O2", "SO2"]


@pytest.fixture(scope="module")
def nets():
    return {g: SmallEquivariantNet(g) for g in GROUPS}


def batch(dtype, n=BATCH, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 12, 12, generator=g, dtype=dtype), torch.randint(0, 3, (n,), generator=g)


def brute_force_grads(model, x, y):
    """{param name: [n, *shape]} with one backward per sample (per-sample loss = cross entropy)."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    per_sample = {n: [] for n in names}
    for i in range(len(x)):
        model.zero_grad()
        F.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        for n, p in model.named_parameters():
            if p.requires_grad:
                per_sample[n].append(p.grad.detach().clone())
    model.zero_grad()
    return {n: torch.stack(g) for n, g in per_sample.items()}


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def brute_force_clipped_mean(grads, max_grad_norm):
    """The clipped mean DP-SGD should produce, clipping by the norm over ALL parameters (opacus' formula)."""
    norms = torch.stack([g.flatten(1).norm(dim=1) for g in grads.values()], dim=1).norm(dim=1)
    factor = (max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
    n = len(norms)
    return {k: torch.einsum("i,i...->...", factor, g) / n for k, g in grads.items()}


@pytest.mark.parametrize("group", GROUPS)
def test_basis_transpose_is_the_vjp_of_the_basis_expansion(nets, group):
    for layer in (nets[group].conv1, nets[group].conv2):
        layer = copy.deepcopy(layer).double()
        w = layer.weights.detach().clone().requires_grad_()
        filt = layer.basisexpansion(w)  # [C_out, C_in, k*k]
        G = torch.randn(3, *filt.shape, dtype=torch.float64)
        expected = torch.stack([torch.autograd.grad(filt, w, G[i], retain_graph=True)[0] for i in range(3)])
        assert rel_err(basis_transpose(layer, G), expected) < 1e-12


@pytest.mark.parametrize("group", ["C4", "O2"])  # one block (field-major projection) / several blocks
@pytest.mark.parametrize(
    "conv_kwargs", [dict(padding=0, stride=2), dict(padding=2, dilation=2), dict(padding=1, bias=False)]
)
def test_every_contraction_matches_brute_force_for_stride_dilation_and_padding(group, conv_kwargs):
    np.random.seed(0)
    _, t_hidden, t_out = field_types(group)
    layer = EquivariantConv2d(t_hidden, t_out, 3, **conv_kwargs).double()
    x = torch.randn(5, t_hidden.size, 13, 13, dtype=torch.float64)
    grad_out = torch.randn_like(layer(x))
    expected = torch.stack(
        [torch.autograd.grad((layer(x[i : i + 1]) * grad_out[i : i + 1]).sum(), layer.weights)[0] for i in range(5)]
    )
    for method in ("unfold", "conv", "basis"):
        for chunk in (2, 5):
            got = coefficient_grad_sample(layer, x, grad_out, method=method, chunk=chunk)
            assert rel_err(got, expected) < 1e-12, (method, chunk)


@pytest.mark.parametrize(
    "geometry",
    [dict(padding=1), dict(padding=0, stride=2), dict(padding=2, dilation=2), dict(padding=1, stride=2, dilation=3)],
)
def test_strided_unfold_equals_torch_unfold(geometry):
    layer = SimpleNamespace(
        kernel_size=3,
        padding=geometry.get("padding", 0),
        stride=geometry.get("stride", 1),
        dilation=geometry.get("dilation", 1),
    )
    x = torch.randn(3, 5, 11, 9)
    expected = F.unfold(x, 3, dilation=layer.dilation, padding=layer.padding, stride=layer.stride)
    assert torch.equal(unfold(x, layer), expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("group", GROUPS)
def test_hooks_mode_per_sample_gradients_equal_brute_force(nets, group, dtype):
    model = copy.deepcopy(nets[group]).to(dtype)
    x, y = batch(dtype)
    expected = brute_force_grads(model, x, y)
    gsm = GradSampleModule(model, loss_reduction="mean")
    F.cross_entropy(gsm(x), y).backward()
    # no layer fell back to functorch: opacus marks fallback layers with ft_compute_sample_grad
    assert not any(hasattr(m, "ft_compute_sample_grad") for m in model.modules())
    for name, p in model.named_parameters():
        assert p.grad_sample.shape == (BATCH, *p.shape)
        assert rel_err(p.grad_sample, expected[name]) < TOLERANCE[dtype], name
    gsm._close()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("group", ["C4", "O2"])
def test_engine_per_sample_gradients_equal_brute_force(nets, group, dtype):
    model = copy.deepcopy(nets[group]).to(dtype)
    x, y = batch(dtype)
    expected = brute_force_grads(model, x, y)
    engine = OutputGradientEngine(model)
    engine.backward(F.cross_entropy(model(x), y))
    for name, p in model.named_parameters():
        assert p.grad is None  # the engine never computes batch gradients
        assert rel_err(p.grad_sample, expected[name]) < TOLERANCE[dtype], name
    engine.remove()


@pytest.mark.parametrize("group", GROUPS)
@pytest.mark.parametrize("path", ["hooks", "engine"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dp_optimizer_update_equals_brute_force_clipped_mean(nets, group, path, dtype):
    model = copy.deepcopy(nets[group]).to(dtype)
    x, y = batch(dtype, n=8, seed=2)
    grads = brute_force_grads(model, x, y)
    norms = torch.stack([g.flatten(1).norm(dim=1) for g in grads.values()], dim=1).norm(dim=1)
    max_grad_norm = norms.median().item()  # some samples clipped, some not
    expected = brute_force_clipped_mean(grads, max_grad_norm)

    optimizer = DPOptimizer(
        torch.optim.SGD(model.parameters(), lr=1.0),
        noise_multiplier=0.0,
        max_grad_norm=max_grad_norm,
        expected_batch_size=len(x),
    )
    if path == "hooks":
        gsm = GradSampleModule(model, loss_reduction="mean")
        F.cross_entropy(gsm(x), y).backward()
    else:
        engine = OutputGradientEngine(model)
        engine.backward(F.cross_entropy(model(x), y))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer.step()
    for name, p in model.named_parameters():
        assert rel_err(before[name] - p.detach(), expected[name]) < TOLERANCE[dtype], name
    if path == "hooks":
        gsm._close()
    else:
        engine.remove()


def test_make_private_hooks_and_engine_give_the_same_clipped_update(nets):
    x, y = batch(torch.float64, n=8, seed=3)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)
    updates = {}
    for mode in ("hooks", "no_op"):
        model = copy.deepcopy(nets["C4"]).double()
        before = [p.detach().clone() for p in model.parameters()]
        private, optimizer, private_loader = PrivacyEngine().make_private(
            module=model,
            optimizer=torch.optim.SGD(model.parameters(), lr=1.0),
            data_loader=loader,
            noise_multiplier=0.0,
            max_grad_norm=0.05,
            poisson_sampling=False,
            grad_sample_mode=mode,
        )
        xb, yb = next(iter(private_loader))
        if mode == "hooks":
            F.cross_entropy(private(xb), yb).backward()
        else:
            OutputGradientEngine(private).backward(F.cross_entropy(private(xb), yb))
        optimizer.step()
        updates[mode] = [b - p.detach() for b, p in zip(before, model.parameters())]
    for a, b in zip(updates["hooks"], updates["no_op"]):
        assert rel_err(b, a) < 1e-10


def test_engine_refuses_in_place_changes_of_a_layer_output(nets):
    from reproduce.errors import ReproduceError

    class InPlace(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner.head(F.relu_(self.inner.conv1(x)).mean(dim=(2, 3)))

    model = InPlace(copy.deepcopy(nets["C4"]))
    engine = OutputGradientEngine(model)
    x, y = batch(torch.float32)
    with pytest.raises(ReproduceError, match="in place"):
        engine.backward(F.cross_entropy(model(x), y))


def test_engine_refuses_in_place_changes_of_a_layer_input():
    """A layer's input changed in place after the layer ran: the rule would read the changed tensor
    (here: all-zero per-sample gradients instead of the true ones), and autograd does not notice
    because no weight gradient is taken. Refused, in the engine; hooks mode's ordinary backward
    refuses it in autograd (opacus's backward hooks forbid the in-place change)."""
    from reproduce.errors import ReproduceError

    class ZeroesItsInput(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 1)

        def forward(self, x):
            h = torch.tanh(self.a(x))
            out = self.b(h)
            h.mul_(0)  # after b ran: b's captured input is now zeros
            return out

    torch.manual_seed(0)
    model, x = ZeroesItsInput(), torch.randn(5, 3)
    engine = OutputGradientEngine(model)
    with pytest.raises(ReproduceError, match="input of layer 'b' was modified in place"):
        engine.backward(model(x).pow(2).mean())
    gsm = GradSampleModule(ZeroesItsInput())
    with pytest.raises(RuntimeError, match="modified inplace|modified by an inplace operation"):
        gsm(x).pow(2).mean().backward()


@pytest.mark.parametrize("group", ["C4", "O2"])
def test_rule_equals_opacus_functorch_fallback(nets, group):
    """The wrapper also works under torch.func (opacus' fallback makes a meta copy of the layer)."""
    from opacus.grad_sample.functorch import ft_compute_per_sample_gradient

    layer = copy.deepcopy(nets[group].conv2).double()
    x = torch.randn(4, layer.in_type.size, 6, 6, dtype=torch.float64)
    grad_out = torch.randn_like(layer(x))
    ours = GradSampleModule.GRAD_SAMPLERS[EquivariantConv2d](layer, [x], grad_out)
    theirs = ft_compute_per_sample_gradient(layer, [x], grad_out)
    assert layer.escnn_conv.basisexpansion.dimension() == layer.weights.numel()  # still usable
    for p in ours:
        assert rel_err(ours[p], theirs[p]) < 1e-12


@pytest.mark.parametrize("path", ["hooks", "engine"])
def test_an_empty_poisson_batch_gives_a_noise_only_step(nets, path):
    model = copy.deepcopy(nets["C4"])
    optimizer = DPOptimizer(
        torch.optim.SGD(model.parameters(), lr=1.0), noise_multiplier=1.0, max_grad_norm=1.0, expected_batch_size=4
    )
    x, y = batch(torch.float32, n=0)
    if path == "hooks":
        gsm = GradSampleModule(model, loss_reduction="mean")
        F.cross_entropy(gsm(x), y).backward()
    else:
        OutputGradientEngine(model).backward(F.cross_entropy(model(x), y))
    for p in model.parameters():
        assert p.grad_sample.shape[1:] == p.shape and len(p.grad_sample) <= 1
    optimizer.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_converting_one_layer_leaves_layers_with_the_same_fields_alone():
    """escnn shares sampled bases between layers; the wrapper keeps its own, so .double() is local."""
    _, t_hidden, _ = field_types("C4")
    first, second = EquivariantConv2d(t_hidden, t_hidden, 3), EquivariantConv2d(t_hidden, t_hidden, 3)
    second.double()
    assert first(torch.randn(1, t_hidden.size, 5, 5)).dtype == torch.float32
    assert second(torch.randn(1, t_hidden.size, 5, 5, dtype=torch.float64)).dtype == torch.float64


def test_engine_ignores_forward_passes_that_did_not_lead_to_the_loss(nets):
    model = copy.deepcopy(nets["C4"]).double()
    x, y = batch(torch.float64)
    expected = brute_force_grads(model, x, y)
    engine = OutputGradientEngine(model)
    model(x[:2])  # e.g. a look at the training accuracy, never backpropagated
    engine.backward(F.cross_entropy(model(x), y))
    for name, p in model.named_parameters():
        assert rel_err(p.grad_sample, expected[name]) < 1e-10, name


DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=[
            pytest.mark.cuda,
            pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine"),
        ],
    ),
]


@pytest.mark.parametrize("path", ["hooks", "engine"])
@pytest.mark.parametrize("device", DEVICES)
def test_dp_step_runs_on_the_device_the_model_was_moved_to(nets, device, path, monkeypatch):
    """``.to(device)`` moves the hidden sampled bases too; the update matches the CPU brute force."""
    # cuDNN convolutions default to TF32 (~1e-3 rounding); compare at full float32 precision
    # (TF32 matmuls are off by default)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    model = copy.deepcopy(nets["D4"])
    x, y = batch(torch.float32, n=8, seed=5)
    expected = brute_force_clipped_mean(brute_force_grads(model, x, y), max_grad_norm=0.1)
    model.to(device)
    for layer in (model.conv1, model.conv2):
        for b in layer.escnn_conv.basisexpansion.buffers():
            assert b.device.type == device
    optimizer = DPOptimizer(
        torch.optim.SGD(model.parameters(), lr=1.0), noise_multiplier=0.0, max_grad_norm=0.1, expected_batch_size=len(x)
    )
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    x, y = x.to(device), y.to(device)
    if path == "hooks":
        gsm = GradSampleModule(model, loss_reduction="mean")
        F.cross_entropy(gsm(x), y).backward()
    else:
        OutputGradientEngine(model).backward(F.cross_entropy(model(x), y))
    optimizer.step()
    for name, p in model.named_parameters():
        assert p.device.type == device
        assert rel_err((before[name] - p.detach()).cpu(), expected[name]) < 1e-4, name
    if path == "hooks":
        gsm._close()


@pytest.mark.parametrize("group", ["C4", "O2"])
def test_standardisation_vjp_is_the_jacobian_transpose_of_weight_standardisation(nets, group):
    layer = copy.deepcopy(nets[group].conv1).double()
    assert layer.standardise
    w = layer.weights.detach().clone().requires_grad_()
    s = layer.effective_weights(w)
    assert abs(s.mean().item()) < 1e-12 and abs(s.std(unbiased=False).item() - 1) < 1e-4
    G = torch.randn(4, w.numel(), dtype=torch.float64)
    expected = torch.stack([torch.autograd.grad(s, w, G[i], retain_graph=True)[0] for i in range(4)])
    assert rel_err(standardisation_vjp(layer, G), expected) < 1e-12
