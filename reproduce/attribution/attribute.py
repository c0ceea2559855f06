"""One model's attributions of a selection of images, and their co-location scores: the stage's core."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import nn

from reproduce.attribution.colocation import TOP_FRACTION, colocation_scores, pixel_saliency, summarise
from reproduce.attribution.gradcam import grad_cam
from reproduce.attribution.guided import guided_backprop, guided_grad_cam
from reproduce.attribution.layers import final_feature_layer
from reproduce.attribution.response import response_map

TARGETS = ("label", "prediction")


@dataclasses.dataclass(frozen=True)
class Attributions:
    """Attribution arrays of N images (float32 unless stated), each for its target class.

    Attributes:
        targets: int64 [N] class attributed to.
        predictions: int64 [N] predicted class.
        gradcam: [N, H, W] Grad-CAM of the final feature layer, upsampled.
        guided: [N, C, H, W] guided backprop.
        guided_gradcam: [N, C, H, W] guided backprop times Grad-CAM.
        response: [N, H, W] final layer's response map (channel norm, upsampled).
    """

    targets: np.ndarray
    predictions: np.ndarray
    gradcam: np.ndarray
    guided: np.ndarray
    guided_gradcam: np.ndarray
    response: np.ndarray

    def arrays(self) -> dict[str, np.ndarray]:
        """Every field by name, e.g. for ``np.savez``."""
        return dataclasses.asdict(self)

    def pixel_maps(self) -> dict[str, np.ndarray]:
        """The three attributions as per-pixel [N, H, W] maps (channels reduced by ``pixel_saliency``)."""
        return {
            "gradcam": self.gradcam,
            "guided": pixel_saliency(self.guided),
            "guided_gradcam": pixel_saliency(self.guided_gradcam),
        }


def attribute(
    model: nn.Module,
    images: torch.Tensor,
    labels: np.ndarray | torch.Tensor,
    *,
    target: str = "label",
    layer: nn.Module | None = None,
) -> Attributions:
    """Grad-CAM, guided backprop, their product and the response map of each image.

    Args:
        model: image classifier (e.g. built by ``reproduce.models.build_cell_model``, in eval mode).
        images: [N, C, H, W] float input, preprocessed as the model was trained on.
        labels: [N] or [N, 1] true classes.
        target: attribute to the true "label" (the evidence for the right class, what the object
            share measures) or to the model's "prediction".
        layer: feature layer for Grad-CAM and the response; default ``final_feature_layer(model)``.

    Returns:
        The arrays, on the CPU.
    """
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    layer = final_feature_layer(model) if layer is None else layer
    labels = torch.as_tensor(np.asarray(labels)).reshape(-1).long()
    with torch.no_grad():
        predictions = model(images).argmax(dim=1).cpu()
    targets = labels if target == "label" else predictions
    cam = grad_cam(model, images, targets, layer=layer)
    guided = guided_backprop(model, images, targets)
    as_np = lambda t: t.detach().cpu().float().numpy()  # noqa: E731
    return Attributions(
        targets=targets.numpy().astype(np.int64),
        predictions=predictions.numpy().astype(np.int64),
        gradcam=as_np(cam),
        guided=as_np(guided),
        guided_gradcam=as_np(guided_grad_cam(guided, cam)),
        response=as_np(response_map(model, images, layer=layer)),
    )


def score(
    attributions: Attributions, *, masks: np.ndarray | None = None, fraction: float = TOP_FRACTION
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Co-location scores of the response map with each attribution, per image and averaged.

    Args:
        attributions: output of ``attribute``.
        masks: optional [N, H, W] object coverage of the same images (embedded data:
            ``objects.embedded_object_masks(...)[indices]``).
        fraction: top share of pixels for the top-k overlap.

    Returns:
        (per-image scores name -> [N], their means name -> float), see ``colocation.colocation_scores``.
    """
    per_image = colocation_scores(attributions.response, attributions.pixel_maps(), masks=masks, fraction=fraction)
    return per_image, summarise(per_image)
