"""Exact per-sample gradients of ``EquivariantConv2d``'s basis coefficients.

The layer's filter is linear in its coefficients, ``filter.flatten() = B @ weights``, so the
per-sample coefficient gradient is ``B^T vec(G_i)`` with ``G_i`` the per-sample gradient of the
expanded filter. ``G_i`` comes from the same contraction opacus uses for ``nn.Conv2d`` (unfold and
batched matmul, or a grouped-convolution weight gradient with the samples as groups for large
feature maps), in chunks of samples so the buffers stay in cache. ``B^T`` is applied block by block
from escnn's own ``BlocksBasisExpansion`` (one sampled basis per pair of input/output field
representations); the dense ``B`` is never built.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Union

import torch
import torch.nn.functional as F
from escnn.nn.modules.basismanager import retrieve_indices
from opacus.grad_sample.utils import register_grad_sampler
from torch import nn

from reproduce.models.escnn_conv import EquivariantConv2d

# Feature maps with at least this many output positions use the grouped-convolution weight gradient;
# smaller ones use unfold + bmm (measured on CPU: grouped conv wins 2-5x at 28x28 and 14x14 and loses
# 3-30x at 7x7 and below).
GROUPED_CONV_MIN_POSITIONS = 144
# Samples per chunk for each method: chunking keeps the per-sample filter gradients in cache.
CHUNK_GROUPED_CONV = 16
CHUNK_UNFOLD = 32


@dataclass(frozen=True)
class _Block:
    """One pair of (input, output) field representations of the basis expansion."""

    out_channels: Union[slice, torch.Tensor]  # channels of all output fields of this representation
    in_channels: Union[slice, torch.Tensor]
    out_fields: int
    out_size: int  # channels per output field
    in_fields: int
    in_size: int
    expansion: nn.Module  # escnn SingleBlockBasisExpansion; its buffer sampled_basis is [D, o, i, S]
    coefficients: slice  # where this block's coefficients live in ``weights``


def _channels(indices: torch.Tensor, contiguous: bool) -> Union[slice, torch.Tensor]:
    return slice(int(indices.min()), int(indices.max()) + 1) if contiguous else indices


def _blocks(layer: EquivariantConv2d) -> List[_Block]:
    """The block structure of ``layer``'s basis expansion, cached on the layer (it never changes)."""
    blocks = layer.__dict__.get("_coefficient_blocks")
    if blocks is not None:
        return blocks
    be = layer.basisexpansion
    in_count, in_indices, in_contiguous = retrieve_indices(be._in_reprs)
    out_count, out_indices, out_contiguous = retrieve_indices(be._out_reprs)
    blocks = []
    for in_name, out_name in be._representations_pairs:
        expansion = getattr(be, f"block_expansion_{be._escape_pair((in_name, out_name))}")
        _, o, i, _ = expansion.sampled_basis.shape
        start, stop = be._weights_ranges[(in_name, out_name)]
        blocks.append(_Block(
            out_channels=_channels(out_indices[out_name], out_contiguous[out_name]),
            in_channels=_channels(in_indices[in_name], in_contiguous[in_name]),
            out_fields=out_count[out_name], out_size=o, in_fields=in_count[in_name], in_size=i,
            expansion=expansion, coefficients=slice(start, stop)))
    layer.__dict__["_coefficient_blocks"] = blocks
    return blocks


def _select(t: torch.Tensor, dim: int, channels: Union[slice, torch.Tensor]) -> torch.Tensor:
    if isinstance(channels, slice):
        return t.narrow(dim, channels.start, channels.stop - channels.start)
    return t.index_select(dim, channels.to(t.device))


def basis_transpose(layer: EquivariantConv2d, filter_grads: torch.Tensor) -> torch.Tensor:
    """Apply ``B^T`` to a batch of filter gradients, block by block.

    Args:
        layer: the layer whose basis expansion defines ``B``.
        filter_grads: ``[n, C_out, C_in, k*k]`` gradients with respect to the expanded filter.

    Returns:
        ``[n, len(layer.weights)]`` gradients with respect to the basis coefficients.
    """
    n, S = filter_grads.shape[0], filter_grads.shape[-1]
    out = filter_grads.new_zeros(n, layer.weights.shape[0])
    for b in _blocks(layer):
        g = _select(_select(filter_grads, 1, b.out_channels), 2, b.in_channels)
        # [n, Fo*o, Fi*i, S] -> [n, Fo, Fi, o*i*S]: rows match the coefficient layout [Fo, Fi, D]
        g = g.reshape(n, b.out_fields, b.out_size, b.in_fields, b.in_size * S).transpose(2, 3)
        basis = b.expansion.sampled_basis.to(filter_grads.dtype)  # [D, o, i, S]
        D = basis.shape[0]
        coeff = torch.matmul(g.reshape(n * b.out_fields * b.in_fields, -1), basis.reshape(D, -1).t())
        out[:, b.coefficients] = coeff.view(n, -1)
    return out


def filter_grad_sample(layer: EquivariantConv2d, x: torch.Tensor, grad_out: torch.Tensor,
                       *, method: str | None = None) -> torch.Tensor:
    """Per-sample gradients ``[n, C_out, C_in, k*k]`` of the expanded filter (not chunked)."""
    n, c_in = x.shape[:2]
    c_out = grad_out.shape[1]
    k = layer.kernel_size
    if method is None:
        method = "conv" if grad_out.shape[2] * grad_out.shape[3] >= GROUPED_CONV_MIN_POSITIONS else "unfold"
    if method == "unfold":
        cols = F.unfold(x, k, dilation=layer.dilation, padding=layer.padding, stride=layer.stride)
        g = torch.bmm(grad_out.reshape(n, c_out, -1), cols.transpose(1, 2))
        return g.view(n, c_out, c_in, k * k)
    if method == "conv":
        # Weight gradient of a grouped convolution with one group per sample = per-sample weight gradients.
        weight = x.new_empty(1).expand(n * c_out, c_in, k, k)  # only its shape is read
        _, g, _ = torch.ops.aten.convolution_backward(
            grad_out.reshape(1, n * c_out, *grad_out.shape[2:]), x.reshape(1, n * c_in, *x.shape[2:]),
            weight, None, _pair(layer.stride), _pair(layer.padding), _pair(layer.dilation), False, [0, 0], n,
            [False, True, False])
        return g.view(n, c_out, c_in, k * k)
    raise ValueError(f"unknown method {method!r}")


def _pair(v) -> List[int]:
    return list(v) if isinstance(v, (tuple, list)) else [v, v]


def coefficient_grad_sample(layer: EquivariantConv2d, x: torch.Tensor, grad_out: torch.Tensor,
                            *, method: str | None = None, chunk: int | None = None) -> torch.Tensor:
    """Per-sample gradients ``[n, len(layer.weights)]`` of the basis coefficients, computed in chunks."""
    n = x.shape[0]
    if method is None:
        method = "conv" if grad_out.shape[2] * grad_out.shape[3] >= GROUPED_CONV_MIN_POSITIONS else "unfold"
    if chunk is None:
        chunk = CHUNK_GROUPED_CONV if method == "conv" else CHUNK_UNFOLD
    out = grad_out.new_empty(n, layer.weights.shape[0])
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        out[s:e] = basis_transpose(layer, filter_grad_sample(layer, x[s:e], grad_out[s:e], method=method))
    return out


@register_grad_sampler(EquivariantConv2d)
def compute_equivariant_conv_grad_sample(layer: EquivariantConv2d, activations: List[torch.Tensor],
                                         backprops: torch.Tensor) -> Dict[nn.Parameter, torch.Tensor]:
    """opacus grad sampler: per-sample gradients of ``weights`` and ``bias`` (basis coefficients)."""
    x = activations[0].to(backprops.dtype)
    ret = {}
    if layer.weights.requires_grad:
        ret[layer.weights] = coefficient_grad_sample(layer, x, backprops)
    if layer.bias is not None and layer.bias.requires_grad:
        # expanded bias gradient = output gradient summed over positions; then the transposed expansion
        ret[layer.bias] = backprops.sum(dim=(2, 3)) @ layer.bias_expansion.to(backprops.dtype)
    return ret
