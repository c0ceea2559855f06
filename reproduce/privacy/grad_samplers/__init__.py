"""Per-sample gradient rules for the layers the suite trains, one file per layer type.

Importing this package registers every rule with opacus (``opacus.GradSampleModule.GRAD_SAMPLERS``):
the suite's own for ``EquivariantConv2d`` and ``nn.Conv2d`` (replacing opacus's, which is wrong on
channels-last inputs) and ``nn.GroupNorm`` (opacus's arithmetic with one temporary fewer), and wraps
every registered rule, opacus's included, so that it receives NCHW-contiguous tensors (``layout``).
"""

from reproduce.privacy.grad_samplers.conv2d import compute_conv2d_grad_sample, conv2d_weight_grad_sample
from reproduce.privacy.grad_samplers.conv_filter import filter_grad_sample, unfold
from reproduce.privacy.grad_samplers.equivariant_conv import (
    basis_transpose,
    coefficient_grad_sample,
    compute_equivariant_conv_grad_sample,
    standardisation_vjp,
)
from reproduce.privacy.grad_samplers.group_norm import compute_group_norm_grad_sample
from reproduce.privacy.grad_samplers.layout import make_registry_layout_safe, rule_for

make_registry_layout_safe()

__all__ = [
    "basis_transpose",
    "coefficient_grad_sample",
    "compute_conv2d_grad_sample",
    "compute_equivariant_conv_grad_sample",
    "compute_group_norm_grad_sample",
    "conv2d_weight_grad_sample",
    "filter_grad_sample",
    "make_registry_layout_safe",
    "rule_for",
    "standardisation_vjp",
    "unfold",
]
