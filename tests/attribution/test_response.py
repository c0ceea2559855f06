"""Filter impulse response: kernel norms per layer and the response map, against hand values."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from reproduce.attribution.response import filter_norms, response_map
from reproduce.models.escnn_conv import EquivariantConv2d
from tests.attribution.conftest import images, suite_model


def test_conv2d_norms_by_hand():
    model = nn.Sequential(nn.Conv2d(1, 2, 3, bias=False), nn.ReLU(), nn.Conv2d(2, 1, 1))
    model[0].weight.data = torch.stack([torch.ones(1, 3, 3), 2 * torch.ones(1, 3, 3)])
    model[2].weight.data = torch.tensor([3.0, 4.0]).reshape(1, 2, 1, 1)
    norms = filter_norms(model)
    assert list(norms) == ["0", "2"]
    np.testing.assert_allclose(norms["0"], [3.0, 6.0])  # sqrt(9 * 1), sqrt(9 * 4)
    np.testing.assert_allclose(norms["2"], [5.0])


def test_every_conv_of_the_conventional_model_is_measured():
    assert len(filter_norms(suite_model("e"))) == 8  # conv1..conv4 and two blocks per res stage


def test_steerable_norms_are_the_expanded_filters_and_equal_within_a_c4_field():
    model = suite_model("C4")
    norms = filter_norms(model)
    convs = {n: m for n, m in model.named_modules() if isinstance(m, EquivariantConv2d)}
    assert list(norms) == list(convs)
    for name, conv in convs.items():
        np.testing.assert_allclose(
            norms[name], conv.expand_filter().detach().flatten(1).norm(dim=1).double(), rtol=1e-6
        )
        # a regular C4 field's 4 channels convolve with 90-degree rotated copies of one filter
        per_field = norms[name].reshape(-1, 4)
        np.testing.assert_allclose(per_field, per_field[:, :1].repeat(4, axis=1), rtol=1e-5)
    assert np.ptp(np.concatenate(list(norms.values()))) > 0.01  # fields differ: the check means something


class _TwoChannels(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Identity()

    def forward(self, x):
        return self.features(x).mean(dim=(2, 3))


def test_response_map_is_the_channel_norm_by_hand():
    x = torch.zeros(1, 2, 2, 2)
    x[0, 0], x[0, 1] = torch.tensor([[3.0, 0.0], [1.0, 0.0]]), torch.tensor([[4.0, 0.0], [0.0, 2.0]])
    model = _TwoChannels()
    got = response_map(model, x, layer=model.features)
    torch.testing.assert_close(got, torch.tensor([[[5.0, 0.0], [1.0, 2.0]]]))
    assert response_map(model, x, layer=model.features, size=(4, 4)).shape == (1, 4, 4)
    assert not model.features._forward_hooks


@pytest.mark.parametrize("group", ["e", "C4"])
def test_response_map_of_suite_models_has_the_input_size(group):
    assert response_map(suite_model(group), images(2, 20)).shape == (2, 20, 20)
