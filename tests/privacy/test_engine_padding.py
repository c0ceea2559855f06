"""The engine's padded forward: a micro-batch padded with zero samples to a multiple of ROW_MULTIPLE rows
(so that oneDNN sees few batch shapes) gives the real samples' exact per-sample gradients, nothing more."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from reproduce.errors import ReproduceError
from reproduce.models import build_model
from reproduce.privacy.fast_engine import ROW_MULTIPLE, OutputGradientEngine, padded_rows

TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-10}


def _model(group: str, dtype):
    torch.manual_seed(0)
    widths = (8, 16, 24) if group == "e" else (4, 8, 16)
    return build_model(group=group, widths=widths, in_channels=3, num_classes=8).to(dtype)


def _brute_force(model, x, y):
    params = [p for p in model.parameters() if p.requires_grad]
    rows = [torch.autograd.grad(F.cross_entropy(model(x[i : i + 1]), y[i : i + 1]), params) for i in range(len(x))]
    return [torch.stack([r[j] for r in rows]) for j in range(len(params))]


def _relative(a, b):
    return float((a - b).flatten(1).norm(dim=1).max() / b.flatten(1).norm(dim=1).max().clamp_min(1e-30))


def test_padded_rows():
    assert ROW_MULTIPLE == 8
    assert [padded_rows(n) for n in (0, 1, 7, 8, 9, 250, 256, 257)] == [0, 8, 8, 8, 16, 256, 256, 264]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("group", ["e", "C4"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_padded_forward_gives_the_real_samples_exact_per_sample_gradients(group, dtype, layout):
    model = _model(group, dtype)
    model.train()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, 3, 28, 28, generator=g, dtype=dtype)  # 5 rows: padded to 8
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 8, (5,), generator=g)
    expected = _brute_force(model, x, y)
    engine = OutputGradientEngine(model)
    seen = []
    first = next(m for m in model.modules() if any(p.requires_grad for p in m.parameters(recurse=False)))
    hook = first.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    out = engine.forward(model, x)
    assert out.shape[0] == 5
    assert seen[0].shape[0] == 8  # the layers ran on the padded batch
    assert seen[0].is_contiguous(memory_format=torch.channels_last) == (layout == "channels_last")
    engine.backward(F.cross_entropy(out, y))
    params = [p for p in model.parameters() if p.requires_grad]
    for p, want in zip(params, expected):
        assert p.grad_sample.shape == want.shape  # the padded rows are dropped
        assert _relative(p.grad_sample, want) < TOLERANCE[dtype]
    hook.remove()
    engine.remove()


def test_unpadded_batch_runs_as_before():
    model = _model("e", torch.float32)
    engine = OutputGradientEngine(model)
    x, y = torch.randn(8, 3, 28, 28), torch.randint(0, 8, (8,))
    engine.backward(F.cross_entropy(engine.forward(model, x), y))
    padded = [p.grad_sample.clone() for p in model.parameters()]
    for p in model.parameters():
        p.grad_sample = None
    engine.backward(F.cross_entropy(model(x), y))
    for a, p in zip(padded, model.parameters()):
        assert torch.equal(a, p.grad_sample)  # 8 rows: nothing padded, bit for bit the plain call


class _FoldsBatch(nn.Module):
    """Changes the batch dimension inside the model: padding could not be dropped from its layers."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(x.reshape(-1, 4)).reshape(x.shape[0], -1)


def test_padding_is_refused_for_a_model_that_changes_the_batch_dimension():
    model = _FoldsBatch()
    engine = OutputGradientEngine(model)
    out = engine.forward(model, torch.randn(3, 8))
    with pytest.raises(ReproduceError, match="padded a batch of 3 samples to 8 rows"):
        engine.backward(out.sum())
