"""Grad-CAM against a hand computation on a tiny model; the final layer of each model family."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from reproduce.attribution.gradcam import grad_cam
from reproduce.attribution.layers import final_feature_layer
from tests.attribution.conftest import suite_model


class _Tiny(nn.Module):
    """conv(1 -> 2, 3x3, pad 1) -> ReLU -> global average -> linear: logits = W @ mean(relu(A))."""

    def __init__(self, conv_weight: np.ndarray, head_weight: np.ndarray, pool: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1, bias=False)
        self.conv.weight.data = torch.tensor(conv_weight, dtype=torch.float64)
        self.pool = nn.AvgPool2d(2) if pool else nn.Identity()
        self.head = nn.Linear(2, head_weight.shape[0], bias=False).double()
        self.head.weight.data = torch.tensor(head_weight, dtype=torch.float64)

    def forward(self, x):
        return self.head(torch.relu(self.pool(self.conv(x))).mean(dim=(2, 3)))


def _hand_conv(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Zero-padded 3x3 cross-correlation of one image [H, W] with filters [K, 3, 3], by loops."""
    h, wd = x.shape
    padded = np.pad(x, 1)
    out = np.zeros((len(w), h, wd))
    for k in range(len(w)):
        for i in range(h):
            for j in range(wd):
                out[k, i, j] = (padded[i : i + 3, j : j + 3] * w[k]).sum()
    return out


CONV = np.array(
    [[[[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]]], [[[0.5, 0.5, 0.5], [0.5, 1.0, 0.5], [0.5, 0.5, 0.5]]]]
)
HEAD = np.array([[1.0, -0.5], [-2.0, 0.25]])
X = np.array([[0.0, 1.0, 2.0, 0.5], [1.0, -1.0, 0.0, 3.0], [0.5, 2.0, -2.0, 1.0], [1.0, 0.0, 1.0, -0.5]])


@pytest.mark.parametrize("target", [0, 1])
def test_grad_cam_equals_hand_computation(target):
    model = _Tiny(CONV, HEAD)
    a = _hand_conv(X, CONV[:, 0])  # the layer's map A [2, 4, 4]
    # d logit_t / d A_k(p) = W[t, k] * 1[A_k(p) > 0] / 16; alpha_k is its spatial mean
    alpha = HEAD[target] * (a > 0).mean(axis=(1, 2)) / a[0].size
    expected = np.maximum((alpha[:, None, None] * a).sum(axis=0), 0.0)
    assert expected.max() > 0 and (expected == 0).any()  # both sides of the ReLU occur
    cam = grad_cam(model, torch.tensor(X)[None, None], torch.tensor([target]), layer=model.conv)
    np.testing.assert_allclose(cam[0].numpy(), expected, rtol=1e-12, atol=1e-12)


def test_grad_cam_upsampling_is_bilinear_by_hand():
    model = _Tiny(CONV, HEAD, pool=True)
    cam4 = grad_cam(model, torch.tensor(X)[None, None], torch.tensor([1]), layer=model.pool)
    low = grad_cam(model, torch.tensor(X)[None, None], torch.tensor([1]), layer=model.pool, size=(2, 2))[0].numpy()
    # align_corners=False from 2 to 4: output i samples source (i + 0.5) / 2 - 0.5, clamped to [0, 1]
    m = np.array([[1.0, 0.0], [0.75, 0.25], [0.25, 0.75], [0.0, 1.0]])
    assert low.max() > 0
    np.testing.assert_allclose(cam4[0].numpy(), m @ low @ m.T, rtol=1e-12, atol=1e-12)


def test_final_feature_layers():
    assert final_feature_layer(suite_model("e")) is suite_model("e").scale_norm2
    assert final_feature_layer(suite_model("C4")) is suite_model("C4").invariant
    with pytest.raises(ValueError, match="layer="):
        final_feature_layer(_Tiny(CONV, HEAD))
