"""Calibration metrics for single-label classifiers: Brier score, ECE, reliability-diagram bins.

Inputs: ``probs`` ``[N, C]`` probability rows (softmax output; each row in [0, 1], summing to 1
within 1e-3), labels ints ``[N]`` or ``[N, 1]`` in ``0..C-1``. A binary classifier given as the
positive-class probability only (``[N]`` or ``[N, 1]``) is expanded to the two columns
``[1 - p, p]`` first, so every formula below is the C-class one.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from reproduce.records.result import ReliabilityBin

from . import register_metric
from .classification import SINGLE_LABEL_TASKS, _prepare, _to_numpy

DEFAULT_N_BINS = 15
_PROB_TOL = 1e-6
_SUM_TOL = 1e-3


def _prepare_probs(probs: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    p = _to_numpy(probs).astype(np.float64)
    if p.ndim == 1 or (p.ndim == 2 and p.shape[1] == 1):
        p = p.reshape(-1)
        p = np.stack([1.0 - p, p], axis=1)
    p, y = _prepare(p, labels, "multi-class")
    if np.any(p < -_PROB_TOL) or np.any(p > 1.0 + _PROB_TOL):
        raise ValueError("probabilities must lie in [0, 1] (were logits passed?)")
    if np.any(np.abs(p.sum(axis=1) - 1.0) > _SUM_TOL):
        raise ValueError("probability rows must sum to 1 (were logits or sigmoid outputs passed?)")
    return p, y


@register_metric("brier", split_tasks=SINGLE_LABEL_TASKS)
def brier_score(probs: Any, labels: Any) -> float:
    """Multi-class Brier score ``(1/N) sum_i sum_k (p_ik - 1[y_i == k])^2``.

    Range [0, 2]: 0 for confident correct predictions, 2 for confident wrong ones. For two classes
    this is twice the one-column binary Brier score ``(1/N) sum_i (p_i1 - y_i)^2``.
    """
    p, y = _prepare_probs(probs, labels)
    onehot = np.zeros_like(p)
    onehot[np.arange(p.shape[0]), y] = 1.0
    return float(np.mean(np.sum((p - onehot) ** 2, axis=1)))


@register_metric("reliability")
def reliability_bins(probs: Any, labels: Any, *, n_bins: int = DEFAULT_N_BINS) -> list[ReliabilityBin]:
    """Per-bin (confidence, accuracy, count) for a reliability diagram.

    Confidence ``c_i = max_k p_ik``, prediction ``argmax_k p_ik`` (first maximum on ties),
    correctness ``a_i = 1[argmax_k p_ik == y_i]``. Bin b (b = 1..n_bins) holds the samples with
    ``c_i in ((b-1)/n_bins, b/n_bins]`` (equal width; c_i = 0 goes to bin 1); per bin
    ``conf_b = mean_{i in B_b} c_i``, ``acc_b = mean_{i in B_b} a_i``, ``count = |B_b|``.
    """
    if not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    p, y = _prepare_probs(probs, labels)
    conf = p.max(axis=1)
    correct = (np.argmax(p, axis=1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # number of inner edges strictly below c: right-closed bins (e_{b-1}, e_b]
    idx = np.searchsorted(edges[1:-1], conf, side="left")
    bins = []
    for b in range(n_bins):
        mask = idx == b
        count = int(mask.sum())
        bins.append(
            ReliabilityBin(
                lower=float(edges[b]),
                upper=float(edges[b + 1]),
                count=count,
                confidence=float(conf[mask].mean()) if count else None,
                accuracy=float(correct[mask].mean()) if count else None,
            )
        )
    return bins


@register_metric("ece", split_tasks=SINGLE_LABEL_TASKS)
def expected_calibration_error(probs: Any, labels: Any, *, n_bins: int = DEFAULT_N_BINS) -> float:
    """Expected calibration error ``ECE = sum_b (|B_b| / N) * |acc_b - conf_b|`` over the
    ``n_bins`` (default 15) equal-width max-probability confidence bins of
    :func:`reliability_bins` (empty bins contribute 0). Range [0, 1]."""
    bins = reliability_bins(probs, labels, n_bins=n_bins)
    n = sum(b.count for b in bins)
    return float(sum(b.count / n * abs(b.accuracy - b.confidence) for b in bins if b.count))
