"""Grad-CAM (Selvaraju et al. 2017) of a feature layer, through captum's ``LayerGradCam``."""

from __future__ import annotations

import torch
from captum.attr import LayerAttribution, LayerGradCam
from torch import nn

from reproduce.attribution.layers import final_feature_layer


def grad_cam(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    *,
    layer: nn.Module | None = None,
    size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Grad-CAM map of each image for its target logit, upsampled to ``size``.

    ``relu(sum_k alpha_k A_k)`` with ``alpha_k`` the spatial mean of d logit_target / d A_k, A the
    layer's output map; then bilinear upsampling (``align_corners=False``, whose sampling grid is
    mirror-symmetric, so upsampling commutes with 90-degree rotations and flips).

    Args:
        model: image classifier returning logits.
        images: [N, C, H, W] model input.
        targets: [N] class index per image.
        layer: module whose output A is used; default ``final_feature_layer(model)``.
        size: output (height, width); default the input's.

    Returns:
        [N, *size] non-negative maps, detached.
    """
    layer = final_feature_layer(model) if layer is None else layer
    cam = LayerGradCam(model, layer).attribute(images, target=targets.tolist(), relu_attributions=True)
    size = tuple(images.shape[-2:]) if size is None else tuple(size)
    return LayerAttribution.interpolate(cam, size, interpolate_mode="bilinear")[:, 0].detach()
