"""Models: ``build_model`` turns a cell's (architecture, group, widths, ...) into an ``nn.Module``.

Architectures are registered by name (``reproduce.models.registry``). The built-in ``resnet9`` is
the ResNet-9 family: "e" is the conventional CNN; every other group (C<N>, D<N>, O2, SO2) is built on
escnn by ``reproduce.models.equivariant``. Both take plain image tensors [B, C, H, W] and return logits.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from reproduce.models.groups import TRIVIAL_GROUP
from reproduce.models.registry import ModelSpec, build_architecture, register_architecture

if TYPE_CHECKING:  # torch is imported where a model is built: the study schema reads this package without it
    from torch import nn

DEFAULT_ARCHITECTURE = "resnet9"


@register_architecture(DEFAULT_ARCHITECTURE)
def resnet9(spec: ModelSpec) -> nn.Module:
    """The ResNet-9 of ``spec.group``: Klause et al.'s for "e", else the equivariant one."""
    if spec.group == TRIVIAL_GROUP:
        from reproduce.models.resnet9 import ResNet9

        # The conventional model has no group to restrict, rescale against or expand in a basis
        # (and Klause et al.'s ResNet-9 has no weight standardisation).
        return ResNet9(widths=tuple(spec.widths), in_channels=spec.in_channels, num_classes=spec.num_classes)
    from reproduce.models.equivariant import build_equivariant_resnet9

    return build_equivariant_resnet9(
        group=spec.group,
        widths=tuple(spec.widths),
        in_channels=spec.in_channels,
        num_classes=spec.num_classes,
        restrict=spec.restrict,
        fix_params=spec.fix_params,
        basis=spec.basis,
        weight_standardisation=spec.weight_standardisation,
    )


def build_model(
    *,
    group: str,
    widths: tuple[int, int, int],
    in_channels: int,
    num_classes: int,
    restrict: str = "none",
    fix_params: bool = False,
    basis: str = "authors",
    weight_standardisation: bool = False,
    seed: int = 0,
    architecture: str = DEFAULT_ARCHITECTURE,
) -> nn.Module:
    """Build ``architecture`` (registered in ``reproduce.models.registry``) for ``group`` with
    deterministic initial weights for ``seed``.

    Seeds torch and numpy's global RNG first: escnn draws D_N/O(2) bases from the latter.
    """
    import numpy as np
    import torch

    torch.manual_seed(seed)
    np.random.seed(seed)
    spec = ModelSpec(
        group=group,
        widths=tuple(widths),
        in_channels=in_channels,
        num_classes=num_classes,
        restrict=restrict,
        fix_params=fix_params,
        basis=basis,
        weight_standardisation=weight_standardisation,
    )
    return build_architecture(architecture, spec)


def build_cell_model(cell, *, in_channels: int, num_classes: int) -> nn.Module:
    """The model of a grid cell (``reproduce.study.Cell``) exactly as its study configures it.

    The trainer and ``reproduce verify`` both build through this, so they build the same model.
    """
    m = cell.study.model
    return build_model(
        group=cell.group,
        widths=cell.widths,
        in_channels=in_channels,
        num_classes=num_classes,
        restrict=m.restrict_for(cell.group),
        fix_params=m.fix_params,
        basis=m.basis,
        weight_standardisation=m.weight_standardisation,
        seed=cell.seed,
        architecture=m.architecture,
    )


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@dataclasses.dataclass(frozen=True)
class ParameterCount:
    """Trainable parameters of one (dataset, group) model of a study."""

    dataset: str
    group: str
    widths: tuple[int, int, int]
    parameters: int


def parameter_counts(study) -> list[ParameterCount]:
    """The parameter count of each (dataset, group, model settings) model of ``study`` (``reproduce.study.Study``).

    Each model is built as its cells build it, with the dataset's channels and classes from the
    dataset table (the first convolution and the classifier depend on them); epsilon,
    multiplicity and seed do not change the count.
    """
    from reproduce.data.registry import dataset_source

    counts: dict[tuple[str, str, str], ParameterCount] = {}
    for cell in study.cells():
        # A model.* grid axis (widths, restriction, ...) gives a group several models.
        key = (cell.dataset, cell.group, repr(cell.config()["model"]))
        if key in counts:
            continue
        info = dataset_source(cell.dataset).info(study.data.size)
        model = build_cell_model(cell, in_channels=info.n_channels, num_classes=info.num_classes)
        counts[key] = ParameterCount(cell.dataset, cell.group, cell.widths, count_parameters(model))
    return list(counts.values())
