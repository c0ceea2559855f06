"""Parameter-free equivariant operations on plain tensors (channels = concatenated escnn fields).

opacus hooks see plain tensors between layers, so nothing here takes or returns a
GeometricTensor, and nothing here has parameters: the only trainable layers of the equivariant
models are EquivariantConv2d and nn.Linear, whose per-sample gradients opacus computes exactly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from escnn.nn import GeometricTensor
from torch import nn


class EscnnOp(nn.Module):
    """Runs a parameter-free escnn module on plain tensors.

    Its buffers (e.g. FourierELU's sampling matrices) follow ``.to()`` but are made non-persistent:
    they are rebuilt from the architecture, so state_dicts hold learned parameters only.

    Args:
        module: escnn EquivariantModule without parameters.
    """

    def __init__(self, module: nn.Module):
        super().__init__()
        if any(True for _ in module.parameters()):
            raise ValueError(f"{type(module).__name__} has parameters; opacus could not see them")
        for m in module.modules():
            m._non_persistent_buffers_set.update(m._buffers.keys())
        self.module = module
        self.in_type, self.out_type = module.in_type, module.out_type

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(GeometricTensor(x, self.in_type)).tensor


class SymmetricPool2d(nn.Module):
    """Stride-2 pooling whose windows are mirror-symmetric on the grid, so it commutes with
    90-degree rotations and flips.

    A 2x2 window on an odd size drops the last row (7 -> 3 keeps rows 0-5): rotated inputs then
    lose a different row and equivariance breaks. Odd sizes therefore use 3-wide windows, which
    cover 0..n-1 symmetrically (7 -> 3 with windows 0-2, 2-4, 4-6); even sizes keep 2x2.

    Args:
        mode: "max" (pointwise, for permutation representations) or "avg" (linear, for any
            representation).
    """

    def __init__(self, mode: str = "max"):
        super().__init__()
        if mode not in ("max", "avg"):
            raise ValueError(f"mode must be 'max' or 'avg', got {mode!r}")
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kernel = tuple(2 if s % 2 == 0 else min(3, s) for s in x.shape[-2:])
        pool = F.max_pool2d if self.mode == "max" else F.avg_pool2d
        return pool(x, kernel, stride=2)

    def extra_repr(self) -> str:
        return f"mode={self.mode}"


class DiscMask(nn.Module):
    """Masks the input to a centred disc (escnn's MaskModule, for any input size).

    For continuous rotations the corners leave the grid; masking them makes rotated inputs carry
    the same content. Pixels outside the radius decay as exp((t - r^2) / sigma^2).

    Args:
        margin: percentage of the radius left out of the flat part (authors: 1).
        sigma: decay width in pixels.
    """

    def __init__(self, margin: float = 1.0, sigma: float = 2.0):
        super().__init__()
        self.margin, self.sigma = margin, sigma

    def mask(self, h: int, w: int, device, dtype) -> torch.Tensor:
        ys = torch.arange(h, device=device, dtype=torch.float64) - (h - 1) / 2
        xs = torch.arange(w, device=device, dtype=torch.float64) - (w - 1) / 2
        c = (min(h, w) - 1) / 2
        t = (c - self.margin / 100.0 * c) ** 2
        r2 = ys[:, None] ** 2 + xs[None, :] ** 2
        m = torch.where(r2 > t, torch.exp((t - r2) / self.sigma**2), torch.ones_like(r2))
        return m.to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.mask(x.shape[-2], x.shape[-1], x.device, x.dtype)


class InducedGate(nn.Module):
    """Induced gated non-linearity (escnn's InducedGatedNonLinearity1, without its gate bias).

    The input holds ``fields`` gate fields (quotient representation, one scalar per coset) followed
    by ``fields`` gated fields (induced representation, one sub-field per coset); each sub-field is
    multiplied by the sigmoid of its coset's gate. escnn's extra gate bias is dropped: it is a
    parameter opacus would not see, and the conv's bias on the gates' trivial part spans it.

    Args:
        fields: number of gated fields.
        cosets: number of sub-fields per gated field (size of the quotient representation).
        subfield_size: size of each sub-field.
    """

    def __init__(self, fields: int, cosets: int, subfield_size: int):
        super().__init__()
        self.fields, self.cosets, self.subfield_size = fields, cosets, subfield_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        n_gates = self.fields * self.cosets
        gates = torch.sigmoid(x[:, :n_gates]).reshape(b, self.fields, self.cosets, 1, h, w)
        gated = x[:, n_gates:].reshape(b, self.fields, self.cosets, self.subfield_size, h, w)
        return (gated * gates).reshape(b, -1, h, w)


class GroupMaxPool(nn.Module):
    """Group pooling: max over each field of a permutation representation -> invariant scalars."""

    def __init__(self, field_size: int):
        super().__init__()
        self.field_size = field_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        return x.reshape(b, c // self.field_size, self.field_size, h, w).amax(dim=2)


class InducedNormPool(nn.Module):
    """Induced norm pooling: max over sub-fields of the sub-field norms -> invariant scalars."""

    def __init__(self, cosets: int, subfield_size: int):
        super().__init__()
        self.cosets, self.subfield_size = cosets, subfield_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        y = x.reshape(b, c // (self.cosets * self.subfield_size), self.cosets, self.subfield_size, h, w)
        return y.norm(dim=3).amax(dim=2)


class NormPool(nn.Module):
    """Norm pooling: the norm of each field (orthogonal representation) -> invariant scalars."""

    def __init__(self, field_size: int):
        super().__init__()
        self.field_size = field_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        return x.reshape(b, c // self.field_size, self.field_size, h, w).norm(dim=2)
