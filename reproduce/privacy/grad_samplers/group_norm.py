"""Per-sample gradients of ``nn.GroupNorm``'s affine weight and bias, replacing opacus's rule in its registry.

Same arithmetic as opacus 1.6's rule (``opacus.grad_sample.group_norm``: the normalised input times
the output gradient, summed over positions; bit for bit, tested), with one activation-sized
temporary instead of two: the product is taken in place in the normalised input, which nothing
else holds. The conventional ResNet-9 has a GroupNorm after every convolution, at up to 28x28.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from opacus.grad_sample.utils import register_grad_sampler
from torch import nn


@register_grad_sampler(nn.GroupNorm)
def compute_group_norm_grad_sample(
    layer: nn.GroupNorm, activations: list[torch.Tensor], backprops: torch.Tensor
) -> dict[nn.Parameter, torch.Tensor]:
    """opacus grad sampler for ``nn.GroupNorm``: per-sample gradients ``[n, C]`` of ``weight`` and ``bias``."""
    x = activations[0]
    ret = {}
    if layer.weight is not None and layer.weight.requires_grad:
        normalised = F.group_norm(x, layer.num_groups, eps=layer.eps)
        ret[layer.weight] = _sum_positions(normalised.mul_(backprops))
    if layer.bias is not None and layer.bias.requires_grad:
        ret[layer.bias] = _sum_positions(backprops)
    return ret


def _sum_positions(t: torch.Tensor) -> torch.Tensor:
    # ``sum(dim=())`` would sum everything: an [n, C] input has no positions to sum over
    return t.sum(dim=tuple(range(2, t.dim()))) if t.dim() > 2 else t
