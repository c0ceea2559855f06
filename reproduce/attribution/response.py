"""Filter impulse response (FIR): the filters' own magnitude, and the final layer's response map.

A linear filter's impulse response is its kernel, so the response magnitude of a layer's filters is
the norm of its (expanded) kernels: for each output channel o, ``||W[o]||_2`` over (C_in, k, k). For
a steerable layer W is the dense filter escnn expands from the basis coefficients, i.e. what the
layer actually convolves with, so conventional and steerable layers are measured alike.

Caveat for reading the numbers: every convolution of these models is followed by a (field) group
norm, which divides out a common scale of the filters of one norm group. The absolute norms are
therefore not fixed by the function the network computes; they record training (e.g. DP noise,
weight decay, weight standardisation, which pins them).

The response map of an image is the pointwise magnitude of the final feature map A (the layer
Grad-CAM reads, ``layers.final_feature_layer``): ``||A[:, y, x]||_2`` over channels, upsampled
bilinearly to the input size. It says where the last layer's filters respond, whatever the class.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from reproduce.attribution.layers import final_feature_layer
from reproduce.models.escnn_conv import EquivariantConv2d


def _kernel(module: nn.Module) -> torch.Tensor | None:
    if isinstance(module, EquivariantConv2d):
        return module.expand_filter()
    if isinstance(module, nn.Conv2d):
        return module.weight
    return None


def filter_norms(model: nn.Module) -> dict[str, np.ndarray]:
    """The L2 norm of every output channel's kernel, per convolution.

    Args:
        model: any model; its ``nn.Conv2d`` and ``EquivariantConv2d`` layers are measured.

    Returns:
        Qualified module name -> float64 [C_out] norms, in module order.
    """
    norms = {}
    with torch.no_grad():
        for name, module in model.named_modules():
            kernel = _kernel(module)
            if kernel is not None:
                norms[name] = kernel.flatten(1).double().norm(dim=1).cpu().numpy()
    return norms


def response_map(
    model: nn.Module, images: torch.Tensor, *, layer: nn.Module | None = None, size: tuple[int, int] | None = None
) -> torch.Tensor:
    """Channel-wise L2 norm of ``layer``'s output for each image, upsampled to ``size``.

    Args:
        model: image classifier.
        images: [N, C, H, W] model input.
        layer: default ``final_feature_layer(model)``.
        size: output (height, width); default the input's.

    Returns:
        [N, *size] non-negative maps, detached.
    """
    layer = final_feature_layer(model) if layer is None else layer
    captured = []
    handle = layer.register_forward_hook(lambda m, args, out: captured.append(out.detach()))
    try:
        with torch.no_grad():
            model(images)
    finally:
        handle.remove()
    magnitude = captured[-1].norm(dim=1, keepdim=True)
    size = tuple(images.shape[-2:]) if size is None else tuple(size)
    return F.interpolate(magnitude, size=size, mode="bilinear", align_corners=False)[:, 0]
