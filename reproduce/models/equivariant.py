"""Equivariant ResNet-9 (Hoelzl et al.) for C_N, D_N, O(2) and SO(2), on plain tensors for opacus.

Layout (widths l1, l2, l3 in fields): conv1(l1) -> conv2(l2, pool) -> res1 (two blocks, added)
-> ScaleNorm -> conv3(l3, pool) -> [restriction] -> conv4(l3, pool) -> res2 (two blocks, added)
-> ScaleNorm -> invariant map -> global average pool -> Linear. Block = EquivariantConv2d ->
non-linearity -> FieldGroupNorm -> optional SymmetricPool2d.

Deviations from the authors' code, all for exact invariance or exact DP per-sample gradients:
global average pooling to 1x1 except for the trivial group (theirs: always a 2x2 grid, which
rotations permute), 3-wide pooling windows on odd sizes (7 -> 3) and no gate bias. Weight
standardisation of the coefficients (theirs: always on) is the study's choice
(``model.weight_standardisation``); its per-sample gradients stay exact, see
``reproduce.privacy.grad_samplers.equivariant_conv.standardisation_vjp``.
"""

from __future__ import annotations

import functools

import torch
from escnn import nn as enn
from torch import nn

from reproduce.models.equivariant_norm import FieldGroupNorm
from reproduce.models.equivariant_ops import (
    DiscMask,
    EscnnOp,
    GroupMaxPool,
    InducedGate,
    InducedNormPool,
    NormPool,
    SymmetricPool2d,
)
from reproduce.models.escnn_conv import EquivariantConv2d
from reproduce.models.groups import (
    CONTINUOUS_FREQUENCY,
    GroupSpec,
    deterministic_escnn,
    make_gspace,
    parse_group,
    scaled_fields,
)

RESTRICTIONS = ("none", "halved")
#: R2Conv basis settings for C_N / D_N. "authors": hlzl/equivariant (sigma None, frequency
#: cutoff 3r); "escnn": escnn's defaults, whose parameter counts match the MedMNIST paper's era
#: (C4 8-16-32 with fix_params: 35k, the paper's "C4 DP best about 35k"). SO(2) and O(2) use
#: escnn's defaults in both.
BASES = {"authors": {"sigma": None, "frequencies_cutoff": lambda r: 3 * r}, "escnn": {}}


class _Regular:
    """C_N / D_N: regular fields, pointwise Mish, max pooling, group (max) pooling."""

    pool_mode = "max"

    def __init__(self, gspace, basis: str = "authors"):
        self.gspace = gspace
        self.conv_kwargs = BASES[basis]

    def layer(self, fields: int):
        """(conv output type, non-linearity, non-linearity output type) for ``fields`` fields."""
        ftype = enn.FieldType(self.gspace, [self.gspace.regular_repr] * fields)
        # Mish acts channel-wise: equivariant because regular representations permute channels.
        return ftype, nn.Mish(), ftype

    def invariant(self, ftype) -> nn.Module:
        return GroupMaxPool(ftype.representations[0].size)


class _InducedO2:
    """O(2): fields induced from the SO(2) irrep of frequency L, induced gates, induced norm pool."""

    pool_mode = "avg"  # max pooling is not equivariant for non-permutation fields
    conv_kwargs = {}

    def __init__(self, gspace):
        self.gspace = gspace
        so2_id = (None, -1)
        so2, _, _ = gspace.fibergroup.subgroup(so2_id)
        self.gated = gspace.fibergroup.induced_representation(so2_id, so2.irrep(CONTINUOUS_FREQUENCY))
        self.gate = gspace.quotient_repr(so2_id)  # one scalar per coset of SO(2) in O(2)
        self.cosets = self.gate.size
        self.subfield = self.gated.size // self.cosets

    def layer(self, fields: int):
        conv_type = enn.FieldType(self.gspace, [self.gate] * fields + [self.gated] * fields)
        act_type = enn.FieldType(self.gspace, [self.gated] * fields)
        return conv_type, InducedGate(fields, self.cosets, self.subfield), act_type

    def invariant(self, ftype) -> nn.Module:
        return InducedNormPool(self.cosets, self.subfield)


class _FourierSO2:
    """SO(2): band-limited fields (frequencies 0..L), FourierELU on 16 samples, norm pooling."""

    pool_mode = "avg"
    conv_kwargs = {"sigma": None, "frequencies_cutoff": None}

    def __init__(self, gspace):
        self.gspace = gspace

    def layer(self, fields: int):
        irreps = self.gspace.fibergroup.bl_irreps(CONTINUOUS_FREQUENCY)
        act = enn.FourierELU(self.gspace, fields, irreps=irreps, type="regular", N=16, inplace=False)
        return act.in_type, EscnnOp(act), act.out_type

    def invariant(self, ftype) -> nn.Module:
        return NormPool(ftype.representations[0].size)


def _family(gspace, spec: GroupSpec, basis: str):
    if spec.finite:
        return _Regular(gspace, basis)
    return _InducedO2(gspace) if spec.kind == "O2" else _FourierSO2(gspace)


class EquivariantBlock(nn.Module):
    """conv -> non-linearity -> equivariant group norm -> optional symmetric 2x2 pooling.

    Args:
        in_type: escnn field type of the input.
        fields: number of output fields.
        family: group family (field types, non-linearity, pooling mode).
        pool: whether to halve the resolution.
        standardise: weight standardisation of the convolution's coefficients.
    """

    def __init__(self, in_type, fields: int, family, *, pool: bool = False, standardise: bool = False):
        super().__init__()
        conv_type, act, self.out_type = family.layer(fields)
        self.conv = EquivariantConv2d(in_type, conv_type, 3, padding=1, standardise=standardise, **family.conv_kwargs)
        self.act = act
        self.norm = FieldGroupNorm(self.out_type)
        self.pool = SymmetricPool2d(family.pool_mode) if pool else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.norm(self.act(self.conv(x))))


class EquivariantResNet9(nn.Module):
    """Equivariant ResNet-9; input [B, C, H, W] (square for rotation invariance), logits [B, K].

    Args:
        spec: the symmetry group.
        fields: field counts (l1, l2, l3) after any fix_params scaling.
        in_channels: colour channels, each a trivial (invariant) field.
        num_classes: number of logits.
        restrict: "none" or "halved" (C_N -> C_{N/2}, D_N -> D_{N/2} before conv4).
        basis: key of ``BASES``.
        weight_standardisation: standardise every convolution's coefficients (authors' code).
    """

    def __init__(
        self,
        spec: GroupSpec,
        fields: tuple[int, int, int],
        in_channels: int,
        num_classes: int,
        restrict: str = "none",
        basis: str = "authors",
        weight_standardisation: bool = False,
    ):
        super().__init__()
        block = functools.partial(EquivariantBlock, standardise=weight_standardisation)
        self.group, self.fields, self.restrict = spec.name, tuple(fields), restrict
        l1, l2, l3 = fields
        gspace = make_gspace(spec)
        family = _family(gspace, spec, basis)
        self.in_type = enn.FieldType(gspace, [gspace.trivial_repr] * in_channels)
        self.mask = DiscMask() if not spec.finite else nn.Identity()

        self.conv1 = block(self.in_type, l1, family)
        self.conv2 = block(self.conv1.out_type, l2, family, pool=True)
        self.res1 = nn.Sequential(block(self.conv2.out_type, l2, family), block(self.conv2.out_type, l2, family))
        self.scale_norm1 = FieldGroupNorm(self.conv2.out_type)
        self.conv3 = block(self.conv2.out_type, l3, family, pool=True)

        # Restriction only re-labels the fields (the data is unchanged): conv4 sees the conv3
        # fields as fields of the subgroup, and everything after is built on the subgroup.
        in4 = self.conv3.out_type
        if restrict == "halved":
            subgroup_id, sub_spec = spec.halved()
            in4 = in4.restrict(subgroup_id)
            family = _family(in4.gspace, sub_spec, basis)
        self.conv4 = block(in4, l3, family, pool=True)
        self.res2 = nn.Sequential(block(self.conv4.out_type, l3, family), block(self.conv4.out_type, l3, family))
        self.scale_norm2 = FieldGroupNorm(self.conv4.out_type)
        self.invariant = family.invariant(self.conv4.out_type)
        # The authors average to a 2x2 grid, which rotations permute: pool to 1x1 instead. Not for
        # the trivial group: its invariant map is linear, and after ScaleNorm's mean subtraction a
        # global average would leave one dead feature per norm group (all of them at small widths).
        trivial = self.conv4.out_type.gspace.fibergroup.order() == 1
        self.head_grid = 2 if trivial else 1
        self.global_pool = nn.AdaptiveAvgPool2d(self.head_grid)
        self.classifier = nn.Linear(len(self.conv4.out_type) * self.head_grid**2, num_classes)

    @property
    def attribution_layer(self) -> nn.Module:
        """The last spatial map the head reads (``reproduce.attribution.layers.final_feature_layer``): the
        group-pooled map of the last stage, one invariant scalar per field and pixel."""
        return self.invariant

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2(self.conv1(self.mask(x)))
        x = self.scale_norm1(self.res1(x) + x)
        x = self.conv4(self.conv3(x))
        x = self.scale_norm2(self.res2(x) + x)
        x = self.global_pool(self.invariant(x)).flatten(1)
        return self.classifier(x)


def field_counts(
    spec: GroupSpec, widths: tuple[int, int, int], *, restrict: str = "none", fix_params: bool = False
) -> tuple[int, int, int]:
    """Field counts per stage: the widths themselves, or the authors' ``fix_params`` scaling.

    With fix_params and a halved restriction, the third width is scaled with |G|/2 (authors' code).
    """
    if not fix_params:
        return tuple(int(w) for w in widths)
    fields = [scaled_fields(w, spec) for w in widths]
    if restrict == "halved":
        fields[2] = scaled_fields(widths[2], spec, order=spec.order // 2)
    return tuple(fields)


def build_equivariant_resnet9(
    *,
    group: str,
    widths: tuple[int, int, int],
    in_channels: int,
    num_classes: int,
    restrict: str = "none",
    fix_params: bool = False,
    basis: str = "authors",
    weight_standardisation: bool = False,
) -> nn.Module:
    """Builds the equivariant ResNet-9 of one symmetry group.

    Seeding: escnn's basis construction runs under numpy's global RNG seeded with the constant
    ``groups.BASIS_SEED`` (the caller's numpy state is restored afterwards) and escnn's disk cache
    is bypassed, so bases do not depend on the training seed or on earlier processes. Parameter
    initialisation (escnn's He init and nn.Linear) draws from torch's global RNG: seed it with
    ``torch.manual_seed`` before calling.

    Args:
        group: "C<N>", "D<N>", "O2" or "SO2" (see ``parse_group``).
        widths: layout (l1, l2, l3) in fields, e.g. (8, 16, 32).
        in_channels: colour channels of the input.
        num_classes: number of logits.
        restrict: "none" or "halved" (C_N/D_N with even N >= 2 only).
        fix_params: scale field counts per group as the authors' ``fix_params``.
        basis: R2Conv basis settings of C_N / D_N, a key of ``BASES``.
        weight_standardisation: standardise each convolution's basis coefficients (authors' code).

    Returns:
        The model: [B, in_channels, H, W] float tensor -> [B, num_classes] logits.

    Raises:
        ValueError: on an unknown group, restriction, or a restriction the group does not have.
    """
    spec = parse_group(group)
    if restrict not in RESTRICTIONS:
        raise ValueError(f"restrict must be one of {RESTRICTIONS}, got {restrict!r}")
    if restrict == "halved":
        spec.halved()  # raises for groups without a half-rotation subgroup
    if basis not in BASES:
        raise ValueError(f"basis must be one of {tuple(BASES)}, got {basis!r}")
    if len(widths) != 3 or min(widths) < 1:
        raise ValueError(f"widths must be three positive field counts, got {widths!r}")
    fields = field_counts(spec, widths, restrict=restrict, fix_params=fix_params)
    with deterministic_escnn():
        return EquivariantResNet9(spec, fields, in_channels, num_classes, restrict, basis, weight_standardisation)
