"""The training-compute estimate against multiply-adds counted by hand."""

from __future__ import annotations

import torch
from torch import nn

from reproduce.metrics.compute import forward_macs, training_flops
from reproduce.models import build_model


def test_a_small_cnn_by_hand():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 6, 3, stride=2, groups=2),
        nn.Flatten(),
        nn.Linear(6 * 3 * 3, 10),
    )
    # conv1: 4x8x8 outputs x 3x3x3; conv2 (groups 2): 6x3x3 outputs x 2x3x3; linear: 54 x 10
    expected = 4 * 64 * 27 + 6 * 9 * 18 + 54 * 10
    assert forward_macs(model, (3, 8, 8)) == expected
    assert training_flops(model, input_shape=(3, 8, 8), steps=5, batch_size=7, multiplicity=2) == 6 * expected * 70
    assert model.training  # mode restored


def test_equivariant_convolutions_count_their_expanded_filters():
    model = build_model(group="C4", widths=(2, 2, 4), in_channels=3, num_classes=8)
    conv1 = model.conv1.conv
    c_out = conv1.expand_filter().shape[0]
    seen = []
    h = conv1.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    macs = forward_macs(model, (3, 28, 28))
    h.remove()
    assert macs > c_out * seen[0][2] * seen[0][3] * 3 * 9  # conv1 alone, by hand, is part of it
    x = torch.zeros(1, 3, 28, 28)
    # the conventional model: the same count as the dense layers it is made of
    e = build_model(group="e", widths=(2, 2, 4), in_channels=3, num_classes=8)
    dense = sum(m.weight[0].numel() * o.numel() for m, o in _outputs(e, x) if isinstance(m, nn.Conv2d))
    dense += sum(m.weight.numel() for m in e.modules() if isinstance(m, nn.Linear))
    assert forward_macs(e, (3, 28, 28)) == dense


def _outputs(model, x):
    out = []
    hs = [
        m.register_forward_hook(lambda m, i, o: out.append((m, o[0])))
        for m in model.modules()
        if isinstance(m, nn.Conv2d)
    ]
    with torch.no_grad():
        model.eval()(x)
    for h in hs:
        h.remove()
    return out
