"""The refusal check: layers without exact per-sample gradients are named, never silently approximated."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from escnn import gspaces
from escnn import nn as enn
from torch import nn

from reproduce.errors import ReproduceError
from reproduce.models.escnn_conv import EquivariantConv2d
from reproduce.privacy.exactness import check_exact_per_sample_gradients
from reproduce.privacy.fast_engine import OutputGradientEngine

GS = gspaces.rot2dOnR2(4)
IN = enn.FieldType(GS, [GS.trivial_repr] * 3)
HIDDEN = enn.FieldType(GS, [GS.regular_repr] * 2)


class Scale(nn.Module):
    """A custom layer with a parameter and no registered rule."""

    def __init__(self):
        super().__init__()
        self.gain = nn.Parameter(torch.ones(1))

    def forward(self, x):
        return x * self.gain


def model_with(layer: nn.Module) -> nn.Module:
    np.random.seed(0)
    return nn.Sequential(
        EquivariantConv2d(IN, HIDDEN, 3, padding=1), nn.Sequential(layer), nn.Flatten(), nn.Linear(8, 3)
    )


def test_a_model_of_equivariant_convs_linear_and_parameter_free_norms_passes():
    np.random.seed(0)
    model = nn.Sequential(
        EquivariantConv2d(IN, HIDDEN, 3, padding=1),
        nn.GroupNorm(2, 8, affine=False),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 3),
    )
    check_exact_per_sample_gradients(model)


@pytest.mark.parametrize(
    "layer, path, words",
    [
        (lambda: enn.R2Conv(HIDDEN, HIDDEN, 3, padding=1), "1.0", ["R2Conv", "EquivariantConv2d"]),
        (lambda: enn.IIDBatchNorm2d(HIDDEN), "1.0", ["IIDBatchNorm2d", "GroupNorm"]),
        (lambda: enn.InnerBatchNorm(HIDDEN, affine=False), "1.0", ["InnerBatchNorm", "GroupNorm"]),
        (lambda: nn.BatchNorm2d(8), "1.0", ["BatchNorm2d", "GroupNorm"]),
        (lambda: nn.BatchNorm2d(8, affine=False, track_running_stats=False), "1.0", ["BatchNorm2d", "GroupNorm"]),
        (Scale, "1.0", ["Scale", "no registered per-sample gradient rule"]),
    ],
)
def test_refusal_names_the_layer_its_type_and_the_fix(layer, path, words):
    model = model_with(layer())
    with pytest.raises(ReproduceError) as info:
        check_exact_per_sample_gradients(model)
    message = str(info.value)
    assert f"layer '{path}'" in message
    for word in words:
        assert word in message
    with pytest.raises(ReproduceError):
        OutputGradientEngine(model)  # the fast path refuses the same models


def test_every_offending_layer_is_listed_and_frozen_layers_are_accepted():
    np.random.seed(0)
    frozen = Scale()
    frozen.gain.requires_grad_(False)
    model = nn.Sequential(nn.BatchNorm2d(3), Scale(), frozen)
    with pytest.raises(ReproduceError) as info:
        check_exact_per_sample_gradients(model)
    assert "layer '0'" in str(info.value) and "layer '1'" in str(info.value)
    assert "layer '2'" not in str(info.value)


def test_a_subclass_of_a_supported_layer_needs_its_own_rule():
    class StandardisedConv(EquivariantConv2d):
        pass

    np.random.seed(0)
    with pytest.raises(ReproduceError, match="StandardisedConv"):
        check_exact_per_sample_gradients(nn.Sequential(StandardisedConv(IN, HIDDEN, 3, padding=1)))
