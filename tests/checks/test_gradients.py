"""``reproduce verify``: the trainer's per-sample gradients and clipped DP update against per-sample
autograd, for every study in studies/ and every group and multiplicity in it (both augmentation
kinds: MedMNIST-like and CIFAR-10), on the trainer's own batches plus forced channels-last and
strided views."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from opacus import GradSampleModule
from opacus.grad_sample.conv import compute_conv_grad_sample as opacus_conv_rule
from torch import nn

from reproduce.checks.gradients import LAYOUTS, format_report, verify_study
from reproduce.cli import main
from reproduce.study import load_study

STUDIES = sorted(Path("studies").glob("*.yaml"))


@pytest.mark.parametrize("path", STUDIES, ids=[p.stem for p in STUDIES])
def test_every_study_verifies_against_per_sample_autograd(path):
    study = load_study(path)
    report = verify_study(study)
    assert report.ok, format_report(report)
    dp_groups = {c.group for c in study.cells() if c.private}
    seen = {(c.group, c.multiplicity, c.layout) for c in report.cases}
    assert seen == {(g, k, layout) for g in dp_groups for k in study.grid.multiplicity for layout in LAYOUTS}
    assert all(c.samples > 0 for c in report.cases)  # a real (non-empty) Poisson batch was checked
    # the forced layouts really reach the model as channels-last / non-contiguous input
    for c in report.cases:
        if c.layout == "channels_last":
            assert c.input_strides[1] == 1
        if c.layout == "strided":
            assert c.input_strides[-1] == 2


def test_float64_tolerance_1e10():
    report = verify_study(
        load_study("studies/ci.yaml"), dtype=torch.float64, layouts=("channels_last",), modes=("engine",)
    )
    assert report.tolerance == 1e-10
    assert report.ok, format_report(report)


def test_verify_catches_a_layout_unsafe_rule(monkeypatch, capsys):
    """The check can fail: opacus's own nn.Conv2d rule without the layout guard is wrong on channels-last input."""
    import reproduce.privacy.grad_samplers.layout as layout

    monkeypatch.setattr(layout, "layout_safe", lambda rule: rule)
    monkeypatch.setitem(GradSampleModule.GRAD_SAMPLERS, nn.Conv2d, opacus_conv_rule)
    report = verify_study(load_study("studies/ci.yaml"), groups=("e",), modes=("engine",))
    bad = {c.layout for c in report.cases if not c.ok(report.tolerance)}
    assert bad == {"channels_last"}, format_report(report)
    assert main(["verify", "studies/ci.yaml", "--groups", "e", "--layouts", "channels_last"]) == 1
    assert "MISMATCH" in capsys.readouterr().out


def test_verify_command_prints_every_case(capsys):
    assert main(["verify", "studies/ci.yaml", "--groups", "C4", "--layouts", "trainer"]) == 0
    out = capsys.readouterr().out
    assert "C4" in out and "engine" in out and "hooks" in out and "0 mismatched" in out


def test_verify_reports_refusals(monkeypatch, capsys):
    """A model the trainer would refuse is reported as refused (exit 1), not silently skipped."""
    import reproduce.checks.gradients as verify

    def with_batch_norm(cell, *, in_channels, num_classes):
        return nn.Sequential(nn.Conv2d(in_channels, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(num_classes))

    monkeypatch.setattr(verify, "build_cell_model", with_batch_norm)
    report = verify_study(load_study("studies/ci.yaml"), groups=("e",))
    assert not report.ok and "e" in report.refusals and "batch norm" in report.refusals["e"][0]
    assert main(["verify", "studies/ci.yaml", "--groups", "e"]) == 1
    assert "REFUSED" in capsys.readouterr().out


def test_nan_errors_fail():
    from reproduce.checks.gradients import CaseReport

    case = CaseReport("e", 1, "trainer", "engine", 3, {"a.weight": 0.0, "b.weight": float("nan")}, 0.0, ())
    assert not case.ok(1e-4) and case.worst()[0] == "b.weight"


def test_forced_layouts_reach_every_trainable_layer():
    """Not only the model input: every trainable layer receives the forced layout."""
    import reproduce.checks.gradients as verify

    seen = []
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Tanh(), nn.Conv2d(4, 4, 3, padding=1))
    hooks = verify._force_layout(model, "strided")  # pre-hooks run in order: these first
    for m in model:
        m.register_forward_pre_hook(lambda m, a: seen.append((type(m).__name__, a[0].is_contiguous())))
    model(torch.randn(2, 3, 5, 5))
    for h in hooks:
        h.remove()
    assert seen == [("Conv2d", False), ("Tanh", True), ("Conv2d", False)]  # Tanh has no parameters


def test_verify_crosses_chunk_boundaries(monkeypatch):
    """A rule that is wrong beyond its first chunk is caught (the verified batches are small)."""
    from reproduce.privacy.grad_samplers import conv_filter

    real = conv_filter.filter_grad_sample
    calls = []

    def wrong_after_first_chunk(layer, x, grad_out, **kw):
        calls.append(len(x))
        out = real(layer, x, grad_out, **kw)
        return out * (2.0 if len(calls) % 2 == 0 else 1.0)

    import reproduce.privacy.grad_samplers.equivariant_conv as eq

    monkeypatch.setattr(eq, "filter_grad_sample", wrong_after_first_chunk)
    report = verify_study(load_study("studies/ci.yaml"), groups=("C4",), layouts=("trainer",), modes=("engine",))
    assert not report.ok
