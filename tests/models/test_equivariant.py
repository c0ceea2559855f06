"""Equivariant ResNet-9: exact invariance, all groups, determinism, checkpoints, DP-readiness."""

from __future__ import annotations

import functools
import hashlib
import io
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

warnings.filterwarnings("ignore", message=".*py3nj.*")

from reproduce.models.equivariant import build_equivariant_resnet9, field_counts  # noqa: E402
from reproduce.models.equivariant_norm import FieldGroupNorm, num_norm_groups  # noqa: E402
from reproduce.models.escnn_conv import EquivariantConv2d  # noqa: E402
from reproduce.models.groups import CACHE_ENV, escnn_cache_dir, parse_group  # noqa: E402

ALL_GROUPS = ["C1", "C4", "C8", "C16", "D4", "O2", "SO2"]
TOL = 1e-4  # relative to the largest logit


@functools.cache
def _model(group: str, restrict: str = "none", seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = build_equivariant_resnet9(group=group, widths=(2, 2, 2), in_channels=3, num_classes=5, restrict=restrict)
    return model.eval()


@functools.cache
def _input(size: int = 28) -> torch.Tensor:
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))


def _gap(model: nn.Module, transform, size: int = 28) -> float:
    """Largest logit change under ``transform`` of the input, relative to the largest logit."""
    x = _input(size)
    with torch.no_grad():
        y, yt = model(x), model(transform(x))
    return ((yt - y).abs().max() / y.abs().max()).item()


def rot(k):
    return lambda x: torch.rot90(x, k, dims=(-2, -1))


hflip, vflip = (lambda x: torch.flip(x, dims=(-1,))), (lambda x: torch.flip(x, dims=(-2,)))


def _fingerprint(model: nn.Module) -> str:
    """Hash of the weights and of every conv's basis (filters of fixed coefficients)."""
    h = hashlib.sha256()
    for name, value in model.state_dict().items():
        h.update(name.encode() + value.numpy().tobytes())
    for m in model.modules():
        if isinstance(m, EquivariantConv2d):
            coeff = torch.linspace(-1, 1, m.weights.numel())
            h.update(m.expand_filter(coeff).detach().numpy().tobytes())
    return h.hexdigest()


# --- group strings -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "group,kind,n,order",
    [("C1", "C", 1, 1), ("C16", "C", 16, 16), ("D4", "D", 4, 8), ("O2", "O2", None, None), ("SO2", "SO2", None, None)],
)
def test_parse_group(group, kind, n, order):
    spec = parse_group(group)
    assert (spec.kind, spec.n, spec.order, spec.name) == (kind, n, order, group)


@pytest.mark.parametrize("bad", ["e", "C0", "c4", "C", "D", "O3", "SO3", "C04", "C-2", " C4", ""])
def test_parse_group_rejects(bad):
    with pytest.raises(ValueError, match="allowed"):
        parse_group(bad)


@pytest.mark.parametrize("group", ["C1", "D1", "C3", "D5", "O2", "SO2"])
def test_halved_refused_without_half_group(group):
    with pytest.raises(ValueError, match="halved"):
        build_equivariant_resnet9(group=group, widths=(2, 2, 2), in_channels=3, num_classes=2, restrict="halved")


def test_unknown_restriction():
    with pytest.raises(ValueError, match="restrict"):
        build_equivariant_resnet9(group="C4", widths=(2, 2, 2), in_channels=3, num_classes=2, restrict="invariant")


def test_fix_params_field_counts():
    c4, o2 = parse_group("C4"), parse_group("O2")
    assert field_counts(c4, (8, 16, 32)) == (8, 16, 32)
    # int(w * sqrt(4 * 1.5) / 4); after "halved" the third width uses |G|/2 = 2.
    assert field_counts(c4, (8, 16, 32), fix_params=True) == (4, 9, 19)
    assert field_counts(c4, (8, 16, 32), fix_params=True, restrict="halved") == (4, 9, 27)
    assert field_counts(o2, (8, 16, 32), fix_params=True) == (9, 19, 39)  # int(w * sqrt(1.5) / 1)


# --- invariance ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "group,transforms,size",
    [
        # 28 -> 14 -> 7 -> 3 exercises the odd-size pooling, 32 -> 16 -> 8 -> 4 the even one.
        ("C4", [rot(1), rot(2), rot(3)], 28),
        ("C4", [rot(1)], 32),
        ("D4", [rot(1), rot(2), rot(3), hflip, vflip, lambda x: x.transpose(-1, -2)], 28),
        ("D4", [rot(1), hflip], 32),
        ("O2", [rot(1), hflip], 28),  # 90-degree rotations map the grid onto itself: exact for O(2) too
        ("SO2", [rot(1), rot(2)], 28),  # FourierELU samples 16 rotations, multiples of 90 degrees too
    ],
)
def test_exact_invariance(group, transforms, size):
    model = _model(group)
    for t in transforms:
        assert _gap(model, t, size) < TOL


@pytest.mark.parametrize("group,transforms", [("D4", [rot(1), hflip]), ("O2", [rot(1), hflip])])
def test_weight_standardisation_keeps_exact_invariance_and_changes_the_filters(group, transforms):
    torch.manual_seed(0)
    model = build_equivariant_resnet9(
        group=group, widths=(2, 2, 2), in_channels=3, num_classes=5, weight_standardisation=True
    ).eval()
    for t in transforms:
        assert _gap(model, t) < TOL
    plain = _model(group)
    conv, plain_conv = model.conv2.conv, plain.conv2.conv
    assert conv.standardise and not plain_conv.standardise
    assert torch.equal(conv.weights, plain_conv.weights)  # same init: only the expansion differs
    w = conv.weights.detach()
    expected = plain_conv.expand_filter((w - w.mean()) / (w.std(unbiased=False) + 1e-5))
    assert torch.allclose(conv.expand_filter(), expected, atol=1e-6)


def test_halved_c4_keeps_only_180_degrees():
    model = _model("C4", "halved")
    assert _gap(model, rot(2)) < TOL
    assert _gap(model, rot(1)) > 1e-3  # the restricted layers are no longer C4-equivariant


def test_halved_d4_keeps_180_degrees_and_flips():
    model = _model("D4", "halved")  # D4 -> D2 with the flip axis kept: both axis flips remain
    for t in (rot(2), hflip, vflip):
        assert _gap(model, t) < TOL
    assert _gap(model, rot(1)) > 1e-3


def test_c4_is_not_flip_invariant():
    assert _gap(_model("C4"), hflip) > 1e-3


def test_escnn_basis_option():
    torch.manual_seed(0)
    model = build_equivariant_resnet9(group="C4", widths=(2, 2, 2), in_channels=3, num_classes=5, basis="escnn").eval()
    assert _gap(model, rot(1)) < TOL
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in _model("C4").parameters())
    with pytest.raises(ValueError, match="basis"):
        build_equivariant_resnet9(group="C4", widths=(2, 2, 2), in_channels=3, num_classes=5, basis="dense")


class _PlainCNN(nn.Module):
    """Non-equivariant control built from torch.nn.Conv2d, same pooling choices."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        x = F.max_pool2d(F.mish(self.conv1(x)), 2)
        return self.head(F.adaptive_avg_pool2d(F.mish(self.conv2(x)), 1).flatten(1))


def test_control_models_are_not_invariant():
    torch.manual_seed(0)
    assert _gap(_PlainCNN().eval(), rot(1)) > 1e-3
    assert _gap(_model("C1"), rot(1)) > 1e-3  # same code path, trivial group


def test_conventional_resnet9_not_invariant():
    resnet9 = pytest.importorskip("reproduce.models.resnet9")
    torch.manual_seed(0)
    model = resnet9.ResNet9(widths=(8, 8, 8), in_channels=3, num_classes=5).eval()
    assert _gap(model, rot(1)) > 1e-3


# --- every group trains --------------------------------------------------------------------------


@pytest.mark.parametrize("group", ALL_GROUPS)
def test_forward_backward(group):
    model = _model(group)
    model.zero_grad()
    out = model.train()(_input())
    model.eval()
    assert out.shape == (2, 5) and torch.isfinite(out).all()
    F.cross_entropy(out, torch.tensor([0, 3])).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"{name} gets no gradient"


@pytest.mark.parametrize("group", ALL_GROUPS)
def test_only_conv_and_linear_have_parameters(group):
    for module in _model(group).modules():
        if any(True for _ in module.parameters(recurse=False)):
            assert isinstance(module, (EquivariantConv2d, nn.Linear)), type(module)


def test_opacus_validator_accepts():
    from opacus.validators import ModuleValidator

    for group in ("C4", "O2", "SO2"):
        assert ModuleValidator.validate(_model(group).train(), strict=False) == []
        _model(group).eval()


@pytest.mark.filterwarnings("ignore:Full backward hook")
@pytest.mark.parametrize("group", ["C4", "O2", "SO2"])
def test_opacus_per_sample_gradients_exact(group):
    pytest.importorskip("reproduce.privacy.grad_samplers")  # registers EquivariantConv2d's rule
    from opacus import GradSampleModule

    torch.manual_seed(0)
    model = build_equivariant_resnet9(group=group, widths=(2, 2, 2), in_channels=3, num_classes=5)
    x, y = _input(), torch.tensor([1, 4])
    gsm = GradSampleModule(model, loss_reduction="sum")
    F.cross_entropy(gsm(x), y, reduction="sum").backward()
    samples = {n: p.grad_sample.clone() for n, p in model.named_parameters()}
    gsm._close()
    for i in range(2):
        model.zero_grad()
        F.cross_entropy(model(x[i : i + 1]), y[i : i + 1], reduction="sum").backward()
        for n, p in model.named_parameters():
            torch.testing.assert_close(samples[n][i], p.grad, rtol=1e-4, atol=1e-6)


# --- normalisation -------------------------------------------------------------------------------


def test_norm_groups():
    assert [num_norm_groups(n) for n in (1, 2, 7, 8, 9, 12, 13, 16, 19)] == [1, 2, 7, 8, 3, 6, 1, 8, 1]


def test_field_norm_is_group_norm_for_regular_fields():
    from escnn import gspaces
    from escnn import nn as enn

    gs = gspaces.rot2dOnR2(4)
    norm = FieldGroupNorm(enn.FieldType(gs, [gs.regular_repr] * 6))
    x = torch.randn(2, 24, 5, 5)
    expected = F.group_norm(x.reshape(2, 6, 4, 5, 5), 6).reshape(x.shape)
    torch.testing.assert_close(norm(x), expected, rtol=1e-4, atol=1e-5)


# --- determinism and checkpoints -----------------------------------------------------------------


def test_same_seed_same_model_in_process():
    a, b = _fingerprint(_model("D4", seed=0)), _fingerprint(_model("D4", seed=1))
    torch.manual_seed(0)
    again = build_equivariant_resnet9(group="D4", widths=(2, 2, 2), in_channels=3, num_classes=5)
    assert _fingerprint(again) == a != b


def test_escnn_cache_dir_is_explicit(monkeypatch):
    monkeypatch.setenv(CACHE_ENV, "off")
    assert escnn_cache_dir() is None
    monkeypatch.setenv(CACHE_ENV, "/some/dir")
    assert escnn_cache_dir() == "/some/dir"
    monkeypatch.delenv(CACHE_ENV)
    assert "site-packages" not in escnn_cache_dir()


def test_numpy_state_restored():
    np.random.seed(123)
    expected = np.random.rand()
    np.random.seed(123)
    build_equivariant_resnet9(group="D4", widths=(2, 2, 2), in_channels=3, num_classes=5)
    assert np.random.rand() == expected


def test_same_seed_same_model_in_fresh_process():
    code = (
        "import sys, warnings, torch; warnings.filterwarnings('ignore'); "
        "sys.path.insert(0, 'tests/models'); "
        "from test_equivariant import _fingerprint, build_equivariant_resnet9; "
        "torch.manual_seed(0); "
        "print(_fingerprint(build_equivariant_resnet9(group='D4', widths=(2, 2, 2), "
        "in_channels=3, num_classes=5)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert out.stdout.strip().splitlines()[-1] == _fingerprint(_model("D4"))


@pytest.mark.parametrize("group", ["C4", "O2", "SO2"])
def test_state_dict_round_trip(group):
    torch.manual_seed(3)
    trained = build_equivariant_resnet9(group=group, widths=(2, 2, 2), in_channels=3, num_classes=5)
    with torch.no_grad():
        for p in trained.parameters():  # stand-in for training: move away from the init
            p.add_(0.1 * torch.randn_like(p))
        expected = trained.eval()(_input())
    buffer = io.BytesIO()
    torch.save(trained.state_dict(), buffer)
    torch.manual_seed(7)
    fresh = build_equivariant_resnet9(group=group, widths=(2, 2, 2), in_channels=3, num_classes=5)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    # Checkpoints hold learned state only: escnn bases are rebuilt from the architecture.
    assert set(state) == {n for n, _ in fresh.named_parameters()}
    fresh.load_state_dict(state)
    with torch.no_grad():
        assert torch.equal(fresh.eval()(_input()), expected)
