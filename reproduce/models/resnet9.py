"""Conventional ResNet-9 of Klause et al. (2022): GroupNorm, Mish, ScaleNorm after residual adds.

No batch norm anywhere: every layer has an exact per-sample gradient rule in opacus (Conv2d,
GroupNorm, Linear), which DP-SGD needs.
"""

from __future__ import annotations

from torch import nn

from reproduce.models.group_norm import group_norm_groups


def _block(c_in: int, c_out: int, *, pool: bool) -> nn.Sequential:
    layers = [
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.GroupNorm(group_norm_groups(c_out), c_out),
        nn.Mish(),
    ]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class ResNet9(nn.Module):
    """conv1 -> conv2(pool) -> res1 -> ScaleNorm -> conv3(pool) -> conv4(pool) -> res2 -> ScaleNorm -> head.

    Args:
        widths: channel layout (w1, w2, w3); the paper's "8-16-32 layout" is (8, 16, 32).
        in_channels: image channels.
        num_classes: number of logits.
    """

    def __init__(self, *, widths: tuple[int, int, int], in_channels: int, num_classes: int):
        super().__init__()
        w1, w2, w3 = widths
        self.conv1 = _block(in_channels, w1, pool=False)
        self.conv2 = _block(w1, w2, pool=True)
        self.res1 = nn.Sequential(_block(w2, w2, pool=False), _block(w2, w2, pool=False))
        self.scale_norm1 = nn.GroupNorm(group_norm_groups(w2), w2)
        self.conv3 = _block(w2, w3, pool=True)
        self.conv4 = _block(w3, w3, pool=True)
        self.res2 = nn.Sequential(_block(w3, w3, pool=False), _block(w3, w3, pool=False))
        self.scale_norm2 = nn.GroupNorm(group_norm_groups(w3), w3)
        self.pool = nn.AdaptiveMaxPool2d((2, 2))
        self.fc = nn.Linear(4 * w3, num_classes)

    @property
    def attribution_layer(self) -> nn.Module:
        """The last spatial map the head reads (``reproduce.attribution.layers.final_feature_layer``): the
        normalised output of the last residual stage, the last convolution's features after the skip."""
        return self.scale_norm2

    def forward(self, x):
        x = self.conv2(self.conv1(x))
        x = self.scale_norm1(x + self.res1(x))
        x = self.conv4(self.conv3(x))
        x = self.scale_norm2(x + self.res2(x))
        return self.fc(self.pool(x).flatten(1))
