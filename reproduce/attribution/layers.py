"""The layer Grad-CAM and the response map read: each model family's final spatial feature map."""

from __future__ import annotations

from torch import nn


def final_feature_layer(model: nn.Module) -> nn.Module:
    """The module whose output is the last spatial map the classifier head reads.

    Each architecture says which module that is (its ``attribution_layer``), so a newly registered one
    (``reproduce.models.registry``) needs nothing here. Conventional ResNet-9: ``scale_norm2``, the
    normalised output of the last residual stage (the last convolution's features after the skip),
    which the head max-pools. Equivariant ResNet-9: ``invariant``, the group-pooled map of the same
    stage: one invariant scalar per field and pixel, which rotates with the input as a plain image
    does. That is what makes Grad-CAM and the response map exactly rotation-consistent, and its
    channels are the features the classifier weighs, as in the conventional model. (Grad-CAM on the
    map before group pooling would be rotation-consistent too, since its channel weights transform
    with the same orthogonal representation as the channels, but its channels are orientations, not
    features.)

    Args:
        model: a model built by ``reproduce.models.build_model``.

    Returns:
        The submodule to attribute to.

    Raises:
        ValueError: for a model that names no ``attribution_layer``; pass the layer explicitly then.
    """
    layer = getattr(model, "attribution_layer", None)
    if isinstance(layer, nn.Module):
        return layer
    raise ValueError(
        f"no final feature layer is known for {type(model).__name__}: give it an `attribution_layer` "
        "property, or pass layer=<the module whose output map to attribute to>"
    )
