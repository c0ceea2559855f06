"""Gradient-weight alignment (GWA; Hoelzl, Rueckert, Kaissis, NeurIPS 2025, arXiv 2510.25480).

Definitions as in the authors' public reference implementation (github.com/hlzl/gwa,
``gwa_torch.py``; the paper itself could not be read here):

Per-sample cosine. For sample i, the final linear layer's per-sample weight gradient
``G_i = delta_i h_i^T`` (cross-entropy: ``delta_i = softmax(z_i) - onehot(y_i)``, ``h_i`` the layer's
input) and its current weight matrix ``W`` (the bias is not used)::

    c_i = <-G_i, W> / (||G_i|| * ||W||)

i.e. the cosine between the sample's update direction (the negative gradient) and the weights
(``final_layer_cosines``). ``per_sample_cosine`` is the general cosine ``<g_i, w> / (||g_i|| ||w||)``
of given gradients (any parameters, flattened and concatenated); pass ``-g`` for the update
direction. Undefined cosines (zero gradient or zero weights) are NaN and left out of summaries.

Summary over a set of cosines (the authors: all samples of an epoch)::

    m = mean(c),  k = m_4 / m_2^2 - 3     (biased excess kurtosis = scipy.stats.kurtosis(c))
    GWA = m / (k + 1.2)                    (``kurtosis_corrected_mean``)

undefined (None) when all cosines are equal (k does not exist) or when k + 1.2 <= 0 (flatter than
a uniform distribution, whose k is -1.2: the formula's pole).

Two deliberate differences from the reference code: the trainer takes the cosine at the weights the
gradient was computed at (the reference reads W after the optimizer step), and a sample with a zero
gradient is left out (the reference's ``+ 1e-12`` counts it as cosine 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from . import register_metric


def _as_list(x: Any) -> list[Any]:
    return list(x) if isinstance(x, (list, tuple)) else [x]


def _to_f64(x: Any) -> np.ndarray:
    if x is None:
        raise ValueError("got None instead of a gradient/weight tensor")
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def per_sample_cosine(per_sample_grads: Any | Sequence[Any], weights: Any | Sequence[Any]) -> np.ndarray:
    """Cosines ``c_i = <g_i, w> / (||g_i|| ||w||)``, shape ``[B]``, float64; NaN where undefined.

    ``per_sample_grads``: one tensor/array ``[B, *shape]`` or a list of them (one per parameter,
    e.g. ``[W.grad_sample, b.grad_sample]``); ``weights``: the matching tensor(s) of ``shape``
    (e.g. ``[W, b]``). Each sample's gradients are flattened and concatenated in list order, and
    so are the weights.
    """
    gs = [_to_f64(g) for g in _as_list(per_sample_grads)]
    ws = [_to_f64(w) for w in _as_list(weights)]
    if not gs or len(gs) != len(ws):
        raise ValueError(f"need one weight tensor per gradient tensor, got {len(gs)} gradients and {len(ws)} weights")
    b = gs[0].shape[0] if gs[0].ndim else 0
    for g, w in zip(gs, ws):
        if g.ndim == 0 or g.shape[0] != b or g.shape[1:] != w.shape:
            raise ValueError(f"per-sample gradient of shape {g.shape} does not match [B={b}, *{w.shape}]")
    if b == 0:
        raise ValueError("no samples")
    g = np.concatenate([x.reshape(b, -1) for x in gs], axis=1)
    w = np.concatenate([x.ravel() for x in ws])
    if not (np.all(np.isfinite(g)) and np.all(np.isfinite(w))):
        raise ValueError("gradients or weights contain NaN or inf")
    g_norm = np.linalg.norm(g, axis=1)
    w_norm = float(np.linalg.norm(w))
    dots = g @ w
    out = np.full(b, np.nan)
    ok = (g_norm > 0) & (w_norm > 0)
    out[ok] = dots[ok] / (g_norm[ok] * w_norm)
    return np.clip(out, -1.0, 1.0)


def linear_ce_per_sample_grads(
    features: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Closed-form per-sample gradients of a final linear layer ``z = W h + b`` under cross-entropy.

    For sample i with input features ``h_i`` ``[d]``, logits ``z_i`` ``[C]`` and label ``y_i``,
    ``delta_i = softmax(z_i) - onehot(y_i)``; then ``dL_i/dW = delta_i h_i^T`` ``[C, d]`` and
    ``dL_i/db = delta_i`` ``[C]``, with ``L_i`` the sample's own (unreduced) loss. Returns
    ``(grad_W [B, C, d], grad_b [B, C])``, detached, in the inputs' dtype.
    """
    h = features.detach()
    z = logits.detach()
    y = labels.detach().reshape(-1).long()
    if h.ndim != 2 or z.ndim != 2 or h.shape[0] != z.shape[0] or y.shape[0] != z.shape[0]:
        raise ValueError(
            f"need features [B, d], logits [B, C], labels [B]; got {tuple(h.shape)}, {tuple(z.shape)}, {tuple(y.shape)}"
        )
    delta = torch.softmax(z, dim=1)
    delta[torch.arange(z.shape[0], device=z.device), y] -= 1.0
    return delta[:, :, None] * h[:, None, :], delta


#: the authors' offset in GWA = mean / (excess kurtosis + 1.2)
KURTOSIS_OFFSET = 1.2


@dataclass(frozen=True)
class AlignmentSummary:
    """Summary of a set of per-sample cosines (see the module docstring for the formulas).

    ``mean``, ``kurtosis_corrected_mean`` (GWA), ``excess_kurtosis``, ``std`` (population, sqrt(m_2)):
    ``None`` when no cosine is defined (GWA and kurtosis also when undefined, see the module docstring). ``n``: number of defined cosines; ``n_undefined``: samples
    whose cosine was undefined (zero gradient or zero weights) and were left out.
    """

    mean: float | None
    kurtosis_corrected_mean: float | None
    excess_kurtosis: float | None
    std: float | None
    n: int
    n_undefined: int


def alignment_summary(cosines: Any) -> AlignmentSummary:
    """Mean and GWA ``m / (k + 1.2)`` of the defined (finite) cosines, k the biased excess kurtosis
    ``m_4 / m_2^2 - 3`` (see the module docstring; None where undefined)."""
    c = _to_f64(cosines).ravel()
    finite = np.isfinite(c)
    c_def = c[finite]
    n = int(c_def.size)
    n_undef = int(c.size - n)
    if n == 0:
        return AlignmentSummary(None, None, None, None, 0, n_undef)
    m = float(c_def.mean())
    if np.ptp(c_def) == 0:
        return AlignmentSummary(m, None, None, 0.0, n, n_undef)  # no spread: kurtosis undefined
    d = c_def - m
    m2 = float(np.mean(d**2))
    k = float(np.mean(d**4)) / m2**2 - 3.0
    corrected = m / (k + KURTOSIS_OFFSET) if k + KURTOSIS_OFFSET > 0 else None
    return AlignmentSummary(m, corrected, k, math.sqrt(m2), n, n_undef)


def final_layer_cosines(
    features: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor
) -> np.ndarray:
    """Per-sample cosines between the update direction ``-G_i`` of a final linear layer's weight
    (cross-entropy, closed form, no autograd) and the weight ``W`` ``[C, d]``; ``[B]``, NaN where undefined."""
    grad_w, _ = linear_ce_per_sample_grads(features, logits, labels)
    return per_sample_cosine(-grad_w, weight)


@register_metric("gw_alignment")
def gradient_weight_alignment(per_sample_grads: Any | Sequence[Any], weights: Any | Sequence[Any]) -> AlignmentSummary:
    """``alignment_summary(per_sample_cosine(per_sample_grads, weights))`` for one logged step."""
    return alignment_summary(per_sample_cosine(per_sample_grads, weights))
