"""Exact per-sample gradients of ``EquivariantConv2d``'s basis coefficients.

The layer's filter is linear in its coefficients, ``filter.flatten() = B @ weights``, so the
per-sample coefficient gradient is ``B^T vec(G_i)`` with ``G_i`` the per-sample gradient of the
expanded filter. ``B^T`` is applied block by block from escnn's own ``BlocksBasisExpansion`` (one
sampled basis ``[D, o, i, k*k]`` per pair of input/output field representations); the dense ``B``
is never built. Three exact contractions, chosen per layer by ``choose_method``:

- ``conv``: ``G_i`` as the weight gradient of a grouped convolution with one group per sample
  (oneDNN; for large feature maps), then ``B^T``;
- ``unfold``: ``G_i`` by unfold + batched matmul, then ``B^T`` (both in ``conv_filter``, exact for
  any memory layout);
- ``basis``: no ``G_i`` at all: convolve each input field with the basis filters, then contract with
  the output gradient (fewest multiply-adds when there are few output positions).

Samples are processed in chunks so that the intermediates stay in cache. For layers whose input and
output fields each share one representation (regular fields), the output gradient's channels are
reordered field-major so that ``B^T`` becomes a few large matrix products without copying ``G``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from escnn.nn.modules.basismanager import retrieve_indices
from opacus.grad_sample.utils import register_grad_sampler
from torch import nn

from reproduce.errors import ReproduceError
from reproduce.models.escnn_conv import EquivariantConv2d
from reproduce.privacy.grad_samplers.conv_filter import choose_filter_method, chunk_size, filter_grad_sample


@dataclass(frozen=True)
class _Block:
    """One pair of (input, output) field representations of the basis expansion."""

    out_channels: slice | torch.Tensor  # channels of all output fields of this representation
    in_channels: slice | torch.Tensor
    out_fields: int
    out_size: int  # channels per output field
    in_fields: int
    in_size: int
    expansion: nn.Module  # escnn SingleBlockBasisExpansion; its buffer sampled_basis is [D, o, i, S]
    coefficients: slice  # where this block's coefficients live in ``weights``


def _channels(indices: torch.Tensor, contiguous: bool) -> slice | torch.Tensor:
    return slice(int(indices.min()), int(indices.max()) + 1) if contiguous else indices


def _blocks(layer: EquivariantConv2d) -> list[_Block]:
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
        blocks.append(
            _Block(
                out_channels=_channels(out_indices[out_name], out_contiguous[out_name]),
                in_channels=_channels(in_indices[in_name], in_contiguous[in_name]),
                out_fields=out_count[out_name],
                out_size=o,
                in_fields=in_count[in_name],
                in_size=i,
                expansion=expansion,
                coefficients=slice(start, stop),
            )
        )
    layer.__dict__["_coefficient_blocks"] = blocks
    return blocks


def _select(t: torch.Tensor, dim: int, channels: slice | torch.Tensor) -> torch.Tensor:
    if isinstance(channels, slice):
        return t.narrow(dim, channels.start, channels.stop - channels.start)
    return t.index_select(dim, channels.to(t.device))


def basis_transpose(
    layer: EquivariantConv2d, filter_grads: torch.Tensor, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Apply ``B^T`` to a batch of filter gradients, block by block.

    Args:
        layer: the layer whose basis expansion defines ``B``.
        filter_grads: ``[n, C_out, C_in, k*k]`` gradients with respect to the expanded filter.
        out: optional ``[n, len(layer.weights)]`` tensor to write into.

    Returns:
        ``[n, len(layer.weights)]`` gradients with respect to the basis coefficients.
    """
    n, c_out, _, S = filter_grads.shape
    if out is None:
        out = filter_grads.new_empty(n, layer.weights.shape[0])
    for b in _blocks(layer):
        basis = b.expansion.sampled_basis.to(filter_grads.dtype)  # [D, o, i, S]
        D = basis.shape[0]
        basis_t = basis.reshape(D, b.out_size, b.in_size * S).permute(1, 2, 0)  # [o, i*S, D]
        dest = out[:, b.coefficients]  # layout [n, Fo, Fi, D]
        g = _select(_select(filter_grads, 1, b.out_channels), 2, b.in_channels)
        if b.out_fields * b.out_size == c_out and isinstance(b.in_channels, slice):
            # No copy of the filter gradient: for each channel a of the output field, a batched
            # matmul over (sample, output field) of strided [Fi, i*S] views with B_a^T.
            g = g.view(n * b.out_fields, b.out_size, b.in_fields, b.in_size * S)
            acc = dest.view(n * b.out_fields, b.in_fields, D) if dest.is_contiguous() else None
            for a in range(b.out_size):
                rhs = basis_t[a].expand(n * b.out_fields, -1, -1)
                if a == 0:
                    acc = torch.bmm(g[:, a], rhs, out=acc) if acc is not None else torch.bmm(g[:, a], rhs)
                else:
                    acc.baddbmm_(g[:, a], rhs)
            if not dest.is_contiguous():
                dest.copy_(acc.view(n, -1))
        else:
            g = g.reshape(n, b.out_fields, b.out_size, b.in_fields, b.in_size * S)
            dest.copy_(torch.einsum("nfagk,akd->nfgd", g, basis_t).reshape(n, -1))
    return out


def _homogeneous_block(layer: EquivariantConv2d) -> _Block | None:
    """The only block if all input fields share one representation and all output fields another."""
    blocks = _blocks(layer)
    if len(blocks) != 1:
        return None
    b = blocks[0]
    whole = b.out_fields * b.out_size == layer.out_type.size and b.in_fields * b.in_size == layer.in_type.size
    return b if whole else None


def _field_major(grad_out: torch.Tensor, b: _Block) -> torch.Tensor:
    """Output channels reordered from (field, channel in field) to (channel in field, field)."""
    n, _, h, w = grad_out.shape
    return grad_out.reshape(n, b.out_fields, b.out_size, h, w).transpose(1, 2).reshape(grad_out.shape)


def _project_homogeneous(b: _Block, filter_grads: torch.Tensor, out: torch.Tensor) -> None:
    """``B^T`` for a single block whose filter gradients have field-major output channels.

    With output channels ordered (channel a in field, field), the rows (output field, input field)
    of ``filter_grads[:, a]`` are one strided matrix ``[Fo*Fi, i*k*k]``: the projection is ``o``
    large matrix products (batched over samples), accumulated into ``out`` ``[n, Fo*Fi*D]``.
    """
    n, S = filter_grads.shape[0], filter_grads.shape[-1]
    basis = b.expansion.sampled_basis.to(filter_grads.dtype)  # [D, o, i, S]
    D = basis.shape[0]
    basis_t = basis.reshape(D, b.out_size, b.in_size * S).permute(1, 2, 0)  # [o, i*S, D]
    g = filter_grads.view(n, b.out_size, b.out_fields * b.in_fields, b.in_size * S)
    acc = out.view(n, b.out_fields * b.in_fields, D)
    for a in range(b.out_size):
        rhs = basis_t[a].expand(n, -1, -1)
        if a == 0:
            torch.bmm(g[:, a], rhs, out=acc)
        else:
            acc.baddbmm_(g[:, a], rhs)


def basis_first_grad_sample(
    layer: EquivariantConv2d, x: torch.Tensor, grad_out: torch.Tensor, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-sample coefficient gradients without forming the filter gradient (for small feature maps).

    Reassociates ``sum_p dy_p^T B_d u_p``: first convolve every input field with the block's basis
    filters (one batched convolution, fields as batch), then contract with the output gradient over
    (output channel in field, position). Exact for any basis; cheaper than filter gradient +
    projection when there are few output positions.
    """
    n, k = x.shape[0], layer.kernel_size
    positions = grad_out.shape[2] * grad_out.shape[3]
    if out is None:
        out = grad_out.new_empty(n, layer.weights.shape[0])
    for b in _blocks(layer):
        basis = b.expansion.sampled_basis.to(x.dtype)  # [D, o, i, S]
        D = basis.shape[0]
        fields = _select(x, 1, b.in_channels).reshape(n * b.in_fields, b.in_size, *x.shape[2:])
        z = F.conv2d(
            fields,
            basis.reshape(D * b.out_size, b.in_size, k, k),
            stride=layer.stride,
            padding=layer.padding,
            dilation=layer.dilation,
        )  # [n*Fi, D*o, H', W']
        dy = _select(grad_out.reshape(n, -1, positions), 1, b.out_channels)
        dy = dy.reshape(n, b.out_fields, b.out_size * positions)
        z = z.reshape(n, b.in_fields * D, b.out_size * positions).transpose(1, 2)  # logical: any layout
        dest = out[:, b.coefficients]  # [n, Fo, Fi*D] is the layout of the coefficients
        if dest.is_contiguous():
            torch.bmm(dy, z, out=dest.view(n, b.out_fields, -1))
        else:
            dest.copy_(torch.bmm(dy, z).view(n, -1))
    return out


def choose_method(layer: EquivariantConv2d, positions: int) -> str:
    """The contraction with the fewest multiply-adds (filter-gradient methods: ``conv`` for large maps)."""
    S = layer.kernel_size**2
    c_out, c_in = layer.out_type.size, layer.in_type.size
    via_filter = c_out * c_in * S * positions
    basis_first = 0
    for b in _blocks(layer):
        D = b.expansion.sampled_basis.shape[0]
        via_filter += b.out_fields * b.in_fields * b.out_size * b.in_size * S * D
        basis_first += b.in_fields * D * b.out_size * (b.in_size * S + b.out_fields) * positions
    return "basis" if basis_first < via_filter else choose_filter_method(positions, c_in)


def _per_sample_elements(layer: EquivariantConv2d, method: str, positions: int) -> int:
    """Elements of the largest per-sample intermediate of ``method`` (to size the chunks)."""
    S = layer.kernel_size**2
    if method == "basis":
        return max(b.in_fields * b.expansion.sampled_basis.shape[0] * b.out_size for b in _blocks(layer)) * positions
    filt = layer.out_type.size * layer.in_type.size * S
    return filt + (layer.in_type.size * S * positions if method == "unfold" else 0)


def coefficient_grad_sample(
    layer: EquivariantConv2d,
    x: torch.Tensor,
    grad_out: torch.Tensor,
    *,
    method: str | None = None,
    chunk: int | None = None,
) -> torch.Tensor:
    """Per-sample gradients ``[n, len(layer.weights)]`` of the basis coefficients, computed in chunks.

    Args:
        layer: the layer.
        x: its input ``[n, C_in, H, W]``.
        grad_out: gradient of the loss with respect to its output ``[n, C_out, H', W']``.
        method: "basis", "unfold" or "conv" (default: ``choose_method``). All are exact.
        chunk: samples per chunk (default: as many as fit ``CHUNK_ELEMENTS``).
    """
    n = x.shape[0]
    if n == 0:  # an empty Poisson batch
        return grad_out.new_zeros(0, layer.weights.shape[0])
    positions = grad_out.shape[2] * grad_out.shape[3]
    method = method or choose_method(layer, positions)
    if chunk is None:
        chunk = chunk_size(_per_sample_elements(layer, method, positions))
    out = grad_out.new_empty(n, layer.weights.shape[0])
    homogeneous = _homogeneous_block(layer) if method != "basis" else None
    if homogeneous is not None:
        grad_out = _field_major(grad_out, homogeneous)
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        if method == "basis":
            basis_first_grad_sample(layer, x[s:e], grad_out[s:e], out=out[s:e])
        elif homogeneous is not None:
            _project_homogeneous(homogeneous, filter_grad_sample(layer, x[s:e], grad_out[s:e], method=method), out[s:e])
        else:
            basis_transpose(layer, filter_grad_sample(layer, x[s:e], grad_out[s:e], method=method), out=out[s:e])
    return out


def standardisation_vjp(layer: EquivariantConv2d, grads: torch.Tensor) -> torch.Tensor:
    """Per-sample gradients w.r.t. the raw coefficients from those w.r.t. the standardised ones.

    ``s(w) = (w - mean) / (std + eps)`` depends on the weights only, never on a sample, so each
    sample's gradient maps through the same Jacobian transpose (exact, not an approximation):
    ``J^T g = (g - mean(g)) / (std + eps) - z * <g, z> * std / (m * (std + eps)^2)`` with
    ``z = (w - mean) / std`` and ``m`` coefficients. ``grads``: ``[n, m]``.
    """
    w = layer.weights.detach().to(grads.dtype)
    std, mean = torch.std_mean(w, unbiased=False)
    if std == 0:
        # the standardisation is not differentiable at constant coefficients (std has no gradient
        # there); refuse rather than let a NaN into the clipped, noised update
        raise ReproduceError(
            f"weight-standardised {type(layer).__name__} with {w.numel()} coefficient(s), all equal: "
            "its per-sample gradient is undefined; use standardise=False for this layer"
        )
    denom = std + layer.STANDARDISE_EPS
    centred = w - mean
    m = w.numel()
    out = (grads - grads.mean(dim=1, keepdim=True)) / denom
    return out - (grads @ centred)[:, None] * centred[None, :] / (m * std * denom**2)


@register_grad_sampler(EquivariantConv2d)
def compute_equivariant_conv_grad_sample(
    layer: EquivariantConv2d, activations: list[torch.Tensor], backprops: torch.Tensor
) -> dict[nn.Parameter, torch.Tensor]:
    """opacus grad sampler: per-sample gradients of ``weights`` and ``bias`` (basis coefficients)."""
    x = activations[0].to(backprops.dtype)
    ret = {}
    if layer.weights.requires_grad:
        grads = coefficient_grad_sample(layer, x, backprops)  # w.r.t. the coefficients expanded
        ret[layer.weights] = standardisation_vjp(layer, grads) if layer.standardise else grads
    if layer.bias is not None and layer.bias.requires_grad:
        # expanded bias gradient = output gradient summed over positions; then the transposed expansion
        ret[layer.bias] = backprops.sum(dim=(2, 3)) @ layer.bias_expansion.to(backprops.dtype)
    return ret
