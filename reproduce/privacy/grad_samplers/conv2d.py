"""Exact per-sample gradients of ``nn.Conv2d``, replacing opacus's rule in its registry.

opacus 1.6's rule (``opacus.grad_sample.conv``) im2cols with NCHW strides and is wrong on
channels-last inputs (also on its main branch), and its unfold + einsum is the slow path for the
conventional model's 28x28 layers. This rule uses the suite's layout-exact contractions (``conv_filter``: a
grouped-convolution weight gradient, or strided unfold + bmm for layers with few input channels).
Convolutions it does not cover (groups > 1, ``padding="same"``/``"valid"``) go to opacus's rule with
NCHW-contiguous tensors, where that rule is exact; padding modes other than zeros have no exact rule
(both rules zero-pad) and are refused.
"""

from __future__ import annotations

import torch
from opacus.grad_sample.conv import compute_conv_grad_sample as opacus_conv_grad_sample
from opacus.grad_sample.utils import register_grad_sampler
from torch import nn

from reproduce.errors import ReproduceError
from reproduce.privacy.grad_samplers.conv_filter import chunk_size, filter_grad_sample


def _covered(layer: nn.Conv2d) -> bool:
    return layer.groups == 1 and not isinstance(layer.padding, str)


# Dense filters (measured on CPU, conventional ResNet-9 layers 28x28 to 3x3, batches 64 and 128): one
# grouped-convolution weight gradient over the whole batch is fastest (1.5-2.3x unfold + bmm) except
# with very few input channels (the RGB input layer), where unfold + bmm is 1.6x faster.
DENSE_GROUPED_CONV_MIN_CHANNELS = 8


def choose_dense_method(in_channels: int) -> str:
    """``conv`` (grouped weight gradient) unless the layer has very few input channels."""
    return "conv" if in_channels >= DENSE_GROUPED_CONV_MIN_CHANNELS else "unfold"


def conv2d_weight_grad_sample(layer: nn.Conv2d, x: torch.Tensor, grad_out: torch.Tensor) -> torch.Tensor:
    """Per-sample weight gradients ``[n, *layer.weight.shape]``; unfold in chunks of samples that stay in cache."""
    n, c_in = x.shape[:2]
    c_out = grad_out.shape[1]
    taps = layer.weight.shape[2] * layer.weight.shape[3]
    positions = grad_out.shape[2] * grad_out.shape[3]
    method = choose_dense_method(c_in)
    if method == "conv":  # one grouped convolution over the whole batch: its result, without a copy
        return filter_grad_sample(layer, x, grad_out, method="conv").view(n, *layer.weight.shape)
    out = grad_out.new_empty(n, c_out, c_in, taps)
    step = chunk_size(c_out * c_in * taps + c_in * taps * positions)
    for s in range(0, n, step):
        e = min(n, s + step)
        filter_grad_sample(layer, x[s:e], grad_out[s:e], method=method, out=out[s:e])
    return out.view(n, *layer.weight.shape)


@register_grad_sampler(nn.Conv2d)
def compute_conv2d_grad_sample(
    layer: nn.Conv2d, activations: list[torch.Tensor], backprops: torch.Tensor
) -> dict[nn.Parameter, torch.Tensor]:
    """opacus grad sampler for ``nn.Conv2d``: per-sample gradients of ``weight`` and ``bias``."""
    x = activations[0].to(backprops.dtype)
    if layer.padding_mode != "zeros":
        # every rule here zero-pads; refused up front by reproduce.privacy.exactness, and here for
        # callers that skip that check
        raise ReproduceError(f"nn.Conv2d with padding_mode={layer.padding_mode!r}: no exact per-sample gradient rule")
    if x.shape[0] == 0:  # an empty Poisson batch (opacus's rule would return one sample)
        return {p: p.new_zeros((0, *p.shape)) for p in layer.parameters(recurse=False) if p.requires_grad}
    if not _covered(layer):
        return opacus_conv_grad_sample(layer, [x.contiguous()], backprops.contiguous())
    ret = {}
    if layer.weight.requires_grad:
        ret[layer.weight] = conv2d_weight_grad_sample(layer, x, backprops)
    if layer.bias is not None and layer.bias.requires_grad:
        ret[layer.bias] = backprops.sum(dim=(2, 3))
    return ret
