"""Gradient sparsity ``l^0_eps`` (the MedMNIST follow-up paper's "l^0_{10^-5}")."""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np
import torch

from . import register_metric

DEFAULT_EPS = 1e-5


def _count(g: Any, eps: float) -> tuple[int, int]:
    """``(#entries with |g| < eps, #entries)``, compared in ``g``'s own precision."""
    if g is None:
        raise ValueError("gradient entry is None (a parameter without .grad?); pass only existing gradients")
    if isinstance(g, torch.Tensor):
        g = g.detach()
        # a Python-float eps is cast to g's dtype by torch's type promotion
        return int(torch.count_nonzero(g.abs() < eps)), g.numel()
    a = np.asarray(g)
    if not np.issubdtype(a.dtype, np.number):
        raise ValueError(f"gradient must be numeric, got dtype {a.dtype}")
    # compare in the array's own float precision, like torch does
    thr = a.dtype.type(eps) if np.issubdtype(a.dtype, np.floating) else eps
    return int(np.count_nonzero(np.abs(a) < thr)), int(a.size)


@register_metric("l0_eps")
def l0_eps(grad: Any | Iterable[Any], eps: float = DEFAULT_EPS) -> float:
    """Share of near-zero gradient entries: ``l0_eps(g) = (1/D) * #{j : |g_j| < eps}``.

    ``grad`` is one tensor/array (any shape) or a list/tuple of them (e.g. ``[p.grad for p in
    params]``), all entries pooled, D their total count. ``eps`` defaults to 1e-5; the comparison
    is strict and done in the gradient's own dtype, as ``g.abs() < eps`` in torch would (a float32
    entry equal to float32(1e-5) is not counted). NaN entries are never counted as sparse
    (``|NaN| < eps`` is false). Returns a value in [0, 1]; raises ``ValueError`` for an empty
    gradient, a ``None`` entry, or ``eps <= 0``.
    """
    if not eps > 0:
        raise ValueError(f"eps must be positive, got {eps!r}")
    parts = list(grad) if isinstance(grad, (list, tuple)) else [grad]
    if not parts:
        raise ValueError("empty gradient list")
    counts = [_count(g, eps) for g in parts]
    total = sum(n for _, n in counts)
    if total == 0:
        raise ValueError("gradient has no entries")
    return sum(k for k, _ in counts) / total
