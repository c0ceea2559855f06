"""Per-sample gradient rules for the suite's escnn-derived layers, one file per layer type.

Importing this package registers every rule with opacus (``opacus.GradSampleModule.GRAD_SAMPLERS``).
"""

from reproduce.privacy.grad_samplers.equivariant_conv import (
    basis_transpose,
    coefficient_grad_sample,
    compute_equivariant_conv_grad_sample,
    filter_grad_sample,
    standardisation_vjp,
    unfold,
)

__all__ = ["basis_transpose", "coefficient_grad_sample", "compute_equivariant_conv_grad_sample",
           "filter_grad_sample", "standardisation_vjp", "unfold"]
