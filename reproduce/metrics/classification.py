"""Accuracy and ROC AUC with the MedMNIST ``Evaluator`` definitions (medmnist 3.0.2 ``getACC``/``getAUC``).

Tasks (MedMNIST ``INFO[flag]["task"]`` strings):

- ``"multi-class"`` and ``"ordinal-regression"``: ``probs`` ``[N, C]`` softmax rows, labels ``[N]``
  or ``[N, 1]`` in ``0..C-1``. ACC = mean 1[argmax_k p_ik == y_i]. AUC = unweighted mean over
  classes k of the one-vs-rest ROC AUC of column k (positives: y_i == k).
- ``"binary-class"``: ``probs`` ``[N, C]`` (the last column is the positive-class probability),
  or ``[N]``/``[N, 1]`` (positive-class probability), labels in {0, 1}.
  ACC = mean 1[(p_i,last > 0.5) == y_i] (strict ``>``, as the Evaluator). AUC = ROC AUC of the last column.
- ``"multi-label, binary-class"``: ``probs`` ``[N, L]`` per-label sigmoids, labels ``[N, L]`` in
  {0, 1}. ACC = (1/L) sum_l mean_i 1[(p_il > 0.5) == y_il]. AUC = mean over labels of the ROC AUC
  of column l.

ROC AUC of scores s with binary truth y (P positives, Q negatives) is the Mann-Whitney statistic
``AUC = (1/(P*Q)) * sum_{i: y_i=1} sum_{j: y_j=0} (1[s_i > s_j] + 0.5 * 1[s_i == s_j])``,
identical to ``sklearn.metrics.roc_auc_score`` (which the Evaluator calls).

Deliberate deviation from the Evaluator: where a class (or label) has no positives or no negatives
in the split its AUC is undefined (the Evaluator crashes in sklearn). :func:`auc` then averages
over the defined classes only and lists the skipped ones in :attr:`AUCResult.undefined_classes`;
when no class is defined the value is ``None`` with a reason. The Evaluator also ``squeeze()``s
its inputs, which breaks single-sample splits; the functions here handle ``N == 1``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import rankdata

from . import register_metric

TASKS = ("multi-class", "binary-class", "multi-label, binary-class", "ordinal-regression")
SINGLE_LABEL_TASKS = ("multi-class", "binary-class", "ordinal-regression")
THRESHOLD = 0.5


def _to_numpy(x: Any) -> np.ndarray:
    """A float/int numpy view of ``x`` (numpy array, list, or torch tensor, detached)."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")


def _prepare(probs: Any, labels: Any, task: str) -> tuple[np.ndarray, np.ndarray]:
    """Validate shapes and return ``(probs, labels)``.

    Single-label tasks: probs ``[N, C]`` (binary-class may also give ``[N]``/``[N, 1]``, returned
    as ``[N, 1]``), labels ``[N]``. Multi-label: probs and labels ``[N, L]``.
    """
    _check_task(task)
    p = _to_numpy(probs).astype(np.float64)
    y = _to_numpy(labels)
    if p.ndim == 0 or p.shape[0] == 0:
        raise ValueError("metrics need at least one sample")
    if not np.all(np.isfinite(p)):
        raise ValueError("probabilities contain NaN or inf")
    if y.size and not np.all(np.equal(np.mod(y, 1), 0)):
        raise ValueError("labels must be integers")
    y = y.astype(np.int64)
    n = p.shape[0]

    if task == "multi-label, binary-class":
        if p.ndim != 2 or y.shape != p.shape:
            raise ValueError(
                f"multi-label task needs probs and labels of equal shape [N, L], got {p.shape} and {y.shape}"
            )
        if not np.all((y == 0) | (y == 1)):
            raise ValueError("multi-label labels must be 0 or 1")
        return p, y

    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.shape != (n,):
        raise ValueError(f"single-label task needs labels of shape [N] or [N, 1] with N={n}, got {y.shape}")
    if task == "binary-class":
        if p.ndim == 1:
            p = p[:, None]
        if p.ndim != 2:
            raise ValueError(f"binary-class probs must be [N], [N, 1] or [N, C], got {p.shape}")
        if not np.all((y == 0) | (y == 1)):
            raise ValueError("binary-class labels must be 0 or 1")
        return p, y
    if p.ndim != 2:
        raise ValueError(f"{task} probs must be [N, C], got {p.shape}")
    if np.any(y < 0) or np.any(y >= p.shape[1]):
        raise ValueError(f"labels must lie in 0..{p.shape[1] - 1}")
    return p, y


def scores_to_probs(scores: Any, *, task: str) -> np.ndarray:
    """Logits to probabilities: softmax over the last axis for multi-class / ordinal-regression and
    for binary-class with >= 2 columns; element-wise sigmoid ``1 / (1 + exp(-z))`` for multi-label
    and for binary-class given one column (``[N]`` or ``[N, 1]``)."""
    _check_task(task)
    z = _to_numpy(scores).astype(np.float64)
    use_sigmoid = task == "multi-label, binary-class" or (task == "binary-class" and (z.ndim == 1 or z.shape[-1] == 1))
    if use_sigmoid:
        # numerically stable sigmoid
        out = np.empty_like(z)
        pos = z >= 0
        out[pos] = 1.0 / (1.0 + np.exp(-z[pos]))
        ez = np.exp(z[~pos])
        out[~pos] = ez / (1.0 + ez)
        return out
    z = z - z.max(axis=-1, keepdims=True)
    ez = np.exp(z)
    return ez / ez.sum(axis=-1, keepdims=True)


@register_metric("acc", split_tasks=TASKS)
def accuracy(probs: Any, labels: Any, *, task: str) -> float:
    """Accuracy with the MedMNIST Evaluator's definition (see the module docstring).

    multi-class / ordinal: ``mean_i 1[argmax_k p_ik == y_i]`` (ties: the first maximal class, as
    ``np.argmax``); binary: ``mean_i 1[(p_i,last > 0.5) == y_i]``; multi-label:
    ``(1/L) sum_l mean_i 1[(p_il > 0.5) == y_il]``.
    """
    p, y = _prepare(probs, labels, task)
    if task == "multi-label, binary-class":
        return float(np.mean(((p > THRESHOLD).astype(np.int64) == y).mean(axis=0)))
    if task == "binary-class":
        return float(np.mean((p[:, -1] > THRESHOLD).astype(np.int64) == y))
    return float(np.mean(np.argmax(p, axis=1) == y))


def roc_auc_binary(y_true: Any, scores: Any) -> float:
    """ROC AUC of ``scores`` against binary ``y_true`` (1 = positive).

    ``AUC = (R_pos - P(P+1)/2) / (P*Q)`` with ``R_pos`` the sum of the average ranks (ties share
    the mean rank) of the P positives among all N = P + Q scores; equals the share of
    (positive, negative) pairs ranked correctly, ties counting 1/2. Raises ``ValueError`` when
    ``y_true`` lacks positives or negatives (AUC undefined).
    """
    y = _to_numpy(y_true).astype(np.int64).ravel()
    s = _to_numpy(scores).astype(np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"y_true and scores differ in length: {y.shape} vs {s.shape}")
    n_pos = int(np.sum(y == 1))
    n_neg = int(np.sum(y == 0))
    if n_pos + n_neg != y.size:
        raise ValueError("y_true must be 0 or 1")
    if n_pos == 0 or n_neg == 0:
        raise ValueError("ROC AUC is undefined when y_true has only one class")
    ranks = rankdata(s, method="average")
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


@dataclass(frozen=True)
class AUCResult:
    """An AUC that may be undefined for some classes.

    ``value``: mean AUC over the defined classes, ``None`` when no class is defined.
    ``per_class``: AUC per class/label (``None`` where undefined); for binary-class one entry.
    ``undefined_classes``: indices of the classes/labels (binary-class: the positive column,
    i.e. ``C - 1``) whose AUC is undefined because the split lacks positives or negatives.
    ``reason``: human-readable explanation when anything was skipped, else ``None``.
    """

    value: float | None
    per_class: tuple[float | None, ...]
    undefined_classes: tuple[int, ...]
    reason: str | None = None

    def as_metrics(self, name: str) -> dict[str, Any]:
        """A split's result keys: the value, the skipped classes and why (``per_class`` is left out)."""
        return {
            name: self.value,
            f"{name}_undefined_classes": list(self.undefined_classes),
            f"{name}_reason": self.reason,
        }


@register_metric("auc", split_tasks=TASKS)
def auc(probs: Any, labels: Any, *, task: str) -> AUCResult:
    """ROC AUC with the MedMNIST Evaluator's definition (see the module docstring).

    multi-class / ordinal: ``(1/|D|) sum_{k in D} AUC(1[y == k], p[:, k])`` over the set D of
    classes k = 0..C-1 that have both positives and negatives in the split (the Evaluator divides
    by C and crashes when D != all classes). Binary: ``AUC(y, p[:, -1])``. Multi-label:
    ``(1/|D|) sum_{l in D} AUC(y[:, l], p[:, l])``.
    """
    p, y = _prepare(probs, labels, task)

    if task == "binary-class":
        pos_col = p.shape[1] - 1 if p.shape[1] > 1 else 1
        present = sorted(set(y.tolist()))
        if len(present) < 2:
            return AUCResult(
                None,
                (None,),
                (pos_col,),
                f"binary-class AUC undefined: the split contains only class {present[0]}",
            )
        value = roc_auc_binary(y, p[:, -1])
        return AUCResult(value, (value,), ())

    if task == "multi-label, binary-class":
        truths = [y[:, k] for k in range(p.shape[1])]
        kind = "label"
    else:
        truths = [(y == k).astype(np.int64) for k in range(p.shape[1])]
        kind = "class"

    per: list[float | None] = []
    no_pos: list[int] = []
    no_neg: list[int] = []
    for k, t in enumerate(truths):
        n_pos = int(t.sum())
        if n_pos == 0:
            no_pos.append(k)
            per.append(None)
        elif n_pos == t.size:
            no_neg.append(k)
            per.append(None)
        else:
            per.append(roc_auc_binary(t, p[:, k]))

    undefined = tuple(sorted(no_pos + no_neg))
    defined = [v for v in per if v is not None]
    if not undefined:
        return AUCResult(float(np.mean(defined)), tuple(per), ())
    parts = []
    if no_pos:
        parts.append(f"{kind}(es) {no_pos} have no positive samples")
    if no_neg:
        parts.append(f"{kind}(es) {no_neg} have no negative samples")
    detail = "; ".join(parts)
    if not defined:
        return AUCResult(None, tuple(per), undefined, f"AUC undefined for every {kind}: {detail}")
    reason = f"one-vs-rest AUC undefined and skipped: {detail}; value is the mean over the other {len(defined)} of {len(per)}"
    return AUCResult(float(np.mean(defined)), tuple(per), undefined, reason)
