"""Gradient-weight alignment (after Hoelzl, Rueckert, Kaissis, NeurIPS 2025, arXiv 2510.25480).

What the project's notes say about the paper: per-sample cosine similarity between a sample's
gradient and the current weights, computed online from the final layer; the per-sample
distribution is summarised by a "kurtosis-corrected mean". The paper itself could not be read
while writing this module, so **the summary below is our reading and must be checked against the
paper** before numbers are compared with it.

Definitions used here
---------------------
Per-sample cosine. For sample i with final-layer per-sample gradient ``g_i`` (all final-layer
parameters, e.g. weight and bias, flattened and concatenated in the given order) and the final
layer's current parameters ``w`` (flattened the same way)::

    c_i = <g_i, w> / (||g_i||_2 * ||w||_2)

``g_i`` is used as given, i.e. the gradient of the sample's loss (ascent direction), not its
negative. If the paper uses the update direction ``-g_i``, every cosine and both means flip sign
(the kurtosis does not). ``c_i`` is undefined (NaN here, counted in ``n_undefined``) when
``||g_i|| = 0`` or ``||w|| = 0``. Cosines are invariant to positive rescaling of ``g_i``, so
Opacus' ``grad_sample`` (scaled by the loss reduction) can be passed directly; it must be the
*unclipped* per-sample gradient if the pre-clipping alignment is wanted.

Summary per logged step, over the n defined cosines::

    m   = (1/n) sum_i c_i                                   (mean)
    m_r = (1/n) sum_i (c_i - m)^r                           (central moments, r = 2, 4)
    k   = m_4 / m_2^2 - 3                                   (excess kurtosis; Fisher, biased
                                                             estimator = scipy.stats.kurtosis(c))
          k := 0 when all c_i are equal (incl. n = 1)
    kurtosis_corrected_mean = m / sqrt(1 + max(k, 0))

i.e. the mean is shrunk towards 0 when the cosine distribution is heavier-tailed than a normal
(a few outlying samples dominate it) and left unchanged otherwise. The exact correction of the
paper may differ (OUR ASSUMPTION, TO BE CHECKED).
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
        raise ValueError(f"need features [B, d], logits [B, C], labels [B]; got {tuple(h.shape)}, {tuple(z.shape)}, {tuple(y.shape)}")
    delta = torch.softmax(z, dim=1)
    delta[torch.arange(z.shape[0]), y] -= 1.0
    return delta[:, :, None] * h[:, None, :], delta


@dataclass(frozen=True)
class AlignmentSummary:
    """Summary of one step's per-sample cosines (see the module docstring for the formulas).

    ``mean``, ``kurtosis_corrected_mean``, ``excess_kurtosis``, ``std`` (population, sqrt(m_2)):
    ``None`` when no cosine is defined. ``n``: number of defined cosines; ``n_undefined``: samples
    whose cosine was undefined (zero gradient or zero weights) and were left out.
    """

    mean: float | None
    kurtosis_corrected_mean: float | None
    excess_kurtosis: float | None
    std: float | None
    n: int
    n_undefined: int


def alignment_summary(cosines: Any) -> AlignmentSummary:
    """Mean and kurtosis-corrected mean ``m / sqrt(1 + max(k, 0))`` of the defined (finite)
    cosines, k the biased excess kurtosis ``m_4 / m_2^2 - 3`` (0 when all values are equal).
    OUR READING of the paper's summary, to be checked against arXiv 2510.25480."""
    c = _to_f64(cosines).ravel()
    finite = np.isfinite(c)
    c_def = c[finite]
    n = int(c_def.size)
    n_undef = int(c.size - n)
    if n == 0:
        return AlignmentSummary(None, None, None, None, 0, n_undef)
    m = float(c_def.mean())
    if np.ptp(c_def) == 0:
        k = 0.0
        m2 = 0.0
    else:
        d = c_def - m
        m2 = float(np.mean(d**2))
        m4 = float(np.mean(d**4))
        k = m4 / m2**2 - 3.0
    corrected = m / math.sqrt(1.0 + max(k, 0.0))
    return AlignmentSummary(m, corrected, k, math.sqrt(m2), n, n_undef)


@register_metric("gw_alignment")
def gradient_weight_alignment(per_sample_grads: Any | Sequence[Any], weights: Any | Sequence[Any]) -> AlignmentSummary:
    """``alignment_summary(per_sample_cosine(per_sample_grads, weights))`` for one logged step."""
    return alignment_summary(per_sample_cosine(per_sample_grads, weights))
