"""Architectures by name: a study's ``model.architecture`` picks one, ``build_model`` builds it.

An architecture is one builder, registered with ``@register_architecture("name")``: it takes a
``ModelSpec`` (the cell's model settings and the dataset's shape) and returns an ``nn.Module`` from
images [B, C, H, W] to logits. Everything else follows from that: the study schema accepts the name,
``reproduce params`` counts its parameters, and the DP engine checks its layers for exact per-sample
gradients before training (``reproduce.privacy.exactness``: a layer without a rule is refused, named).

This module is torch-free, so the schema reads the names without torch; so is the module that
registers the built-in ResNet-9 (``reproduce.models``, which imports torch inside its builder).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Callable, TypeVar

from reproduce.errors import ReproduceError

if TYPE_CHECKING:
    from torch import nn


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """What an architecture's builder reads: the cell's model settings and the dataset's shape.

    Attributes:
        group: the symmetry group ("e": the conventional CNN; ``reproduce.models.groups``).
        widths: the channel layout (w1, w2, w3) of the cell's group.
        in_channels: image channels.
        num_classes: number of logits.
        restrict: "none" or "halved" (restriction of C_N/D_N before the last stage).
        fix_params: scale field counts to keep parameter counts comparable across groups.
        basis: the steerable basis of C_N/D_N convolutions ("authors" or "escnn").
        weight_standardisation: standardise each equivariant convolution's basis coefficients.
    """

    group: str
    widths: tuple[int, int, int]
    in_channels: int
    num_classes: int
    restrict: str = "none"
    fix_params: bool = False
    basis: str = "authors"
    weight_standardisation: bool = False


Builder = Callable[[ModelSpec], "nn.Module"]
B = TypeVar("B", bound=Callable[..., object])

ARCHITECTURES: dict[str, Builder] = {}


def register_architecture(name: str) -> Callable[[B], B]:
    """Register a builder ``(spec: ModelSpec) -> nn.Module`` under ``name`` in :data:`ARCHITECTURES` (once)."""

    def decorator(fn: B) -> B:
        if name in ARCHITECTURES and ARCHITECTURES[name] is not fn:
            raise ValueError(f"architecture {name!r} is already registered ({ARCHITECTURES[name].__qualname__})")
        ARCHITECTURES[name] = fn
        return fn

    return decorator


def build_architecture(name: str, spec: ModelSpec) -> nn.Module:
    """The model of the registered architecture ``name`` for ``spec``.

    Raises:
        ReproduceError: for a name no module has registered.
    """
    if name not in ARCHITECTURES:
        raise ReproduceError(
            f"unknown architecture {name!r}; registered: {', '.join(ARCHITECTURES)} "
            "(register a builder with @register_architecture)"
        )
    return ARCHITECTURES[name](spec)
