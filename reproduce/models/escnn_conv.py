"""An escnn steerable convolution that opacus can see: plain tensors in and out, coefficients as parameters.

opacus refuses any trainable module that also has buffers, and escnn's ``R2Conv`` keeps its sampled
basis in buffers. This wrapper owns the trainable basis coefficients (``weights``, ``bias``) and keeps
the escnn module out of ``nn.Module``'s registry, so opacus sees one small layer with two parameters.
Its per-sample gradient rule lives in ``reproduce.privacy.grad_samplers``.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from escnn import nn as enn
from torch import nn


def _unshare_basis(expansion: nn.Module) -> None:
    """Give this layer its own copy of each sampled basis block.

    escnn caches the per-block basis modules and shares them between all layers with the same field
    representations, so ``.double()`` or ``.to(device)`` on one layer would silently convert the
    bases of the others (and break their forward).
    """
    for name, block in list(expansion.named_children()):
        own = copy.copy(block)
        own._buffers = {k: None if v is None else v.clone() for k, v in block._buffers.items()}
        own._parameters, own._modules = dict(block._parameters), dict(block._modules)
        setattr(expansion, name, own)


class EquivariantConv2d(nn.Module):
    """``R2Conv`` on plain tensors whose parameters are escnn's basis coefficients.

    Args:
        in_type: escnn field type of the input.
        out_type: escnn field type of the output.
        kernel_size: square kernel size.
        padding: zero padding on each side.
        bias: whether to learn an (invariant) bias.
        standardise: expand the filter from the standardised coefficients
            ``(w - mean(w)) / (std(w) + 1e-5)`` (mean and population std over all of the layer's
            coefficients), the authors' weight standardisation (hlzl/equivariant).
        **r2conv_kwargs: passed to ``escnn.nn.R2Conv`` (e.g. ``frequencies_cutoff``).
    """

    #: added to the standard deviation, as in the authors' code
    STANDARDISE_EPS = 1e-5

    # reproduce.metrics.compute counts the multiply-adds of the expanded filter as a Conv2d's (a flag, not
    # an import, so the metrics stay below the models)
    counts_as_convolution = True

    def __init__(
        self,
        in_type: enn.FieldType,
        out_type: enn.FieldType,
        kernel_size: int,
        *,
        padding: int = 0,
        bias: bool = True,
        standardise: bool = False,
        **r2conv_kwargs,
    ):
        super().__init__()
        conv = enn.R2Conv(in_type, out_type, kernel_size, padding=padding, bias=bias, **r2conv_kwargs)
        if conv.padding_mode != "zeros":
            raise ValueError("EquivariantConv2d supports zero padding only")
        if conv.groups != 1:
            raise ValueError("EquivariantConv2d supports groups=1 only (as does its per-sample gradient rule)")
        self.in_type, self.out_type = in_type, out_type
        self.kernel_size, self.padding, self.standardise = kernel_size, padding, standardise
        self.stride, self.dilation, self.groups = conv.stride, conv.dilation, conv.groups
        # The coefficients become ours; escnn's copies are dropped so nothing is trained twice.
        self.weights = nn.Parameter(conv.weights.detach().clone())
        self.bias = nn.Parameter(conv.bias.detach().clone()) if conv.bias is not None else None
        del conv.weights
        if conv.bias is not None:
            del conv.bias
        conv.weights, conv.bias = None, None
        _unshare_basis(conv.basisexpansion)
        # object.__setattr__ keeps the escnn module (and its buffers) out of modules()/state_dict().
        object.__setattr__(self, "escnn_conv", conv)

    @property
    def basisexpansion(self):
        """escnn's block-sparse basis expansion: filter.flatten(1) = B @ weights."""
        return self.escnn_conv.basisexpansion

    @property
    def bias_expansion(self) -> torch.Tensor | None:
        """Matrix mapping the invariant bias coefficients to the per-channel bias."""
        return self.escnn_conv.bias_expansion if self.bias is not None else None

    def effective_weights(self, weights: torch.Tensor | None = None) -> torch.Tensor:
        """The coefficients the filter is expanded from: standardised if ``standardise``."""
        w = self.weights if weights is None else weights
        if not self.standardise:
            return w
        std, mean = torch.std_mean(w, dim=0, unbiased=False, keepdim=True)
        return (w - mean) / (std + self.STANDARDISE_EPS)

    def expand_filter(self, weights: torch.Tensor | None = None) -> torch.Tensor:
        """Dense filter [C_out, C_in, k, k] for the given (default: current) coefficients."""
        filt = self.basisexpansion(self.effective_weights(weights))
        return filt.reshape(filt.shape[0], filt.shape[1], self.kernel_size, self.kernel_size)

    def expand_bias(self) -> torch.Tensor | None:
        return None if self.bias is None else self.bias_expansion @ self.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(
            x,
            self.expand_filter(),
            self.expand_bias(),
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            groups=self.groups,
        )

    def _apply(self, fn, *args, **kwargs):
        # The hidden escnn module's buffers (sampled basis) must follow .to(device) / .double(), but
        # not .to("meta"): torch.func users (opacus' functorch fallback) make a meta copy as a template
        # for functional_call, whose forward still needs the real basis.
        super()._apply(fn, *args, **kwargs)
        if fn(torch.zeros(())).device.type != "meta":
            self.escnn_conv._apply(fn, *args, **kwargs)
        return self

    def extra_repr(self) -> str:
        return f"{self.in_type.size}->{self.out_type.size} channels, k={self.kernel_size}, padding={self.padding}, coefficients={self.weights.numel()}{', standardised' if self.standardise else ''}"
