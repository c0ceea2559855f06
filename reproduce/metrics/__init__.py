"""Metrics registry: pure functions named by the papers, looked up by name.

Every metric is a pure function (no state, no I/O, inputs are not modified) whose docstring states
its formula. ``METRICS`` maps a registered name to the function; ``register_metric(name)`` is the
decorator that fills it. A metric registered with ``split_tasks`` is one of a split's evaluation
metrics for those tasks (``SPLIT_METRICS``): ``compute_eval_metrics`` evaluates exactly those, in
registration order, into a JSON-ready dict (today accuracy and AUC with the MedMNIST Evaluator's
definitions, Brier score and ECE), so a new split metric is one function and one decorator.

Registered names:

=================  ==============================================================
``acc``            :func:`reproduce.metrics.classification.accuracy`
``auc``            :func:`reproduce.metrics.classification.auc`
``brier``          :func:`reproduce.metrics.calibration.brier_score`
``ece``            :func:`reproduce.metrics.calibration.expected_calibration_error`
``reliability``    :func:`reproduce.metrics.calibration.reliability_bins`
``l0_eps``         :func:`reproduce.metrics.sparsity.l0_eps`
``gw_alignment``   :func:`reproduce.metrics.alignment.gradient_weight_alignment`
``invariance_gap`` :func:`reproduce.metrics.invariance.invariance_gap`
=================  ==============================================================
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, TypeVar

import numpy as np

F = TypeVar("F", bound=Callable[..., Any])

METRICS: dict[str, Callable[..., Any]] = {}
# Name -> the tasks for which the metric is reported on every evaluated split.
SPLIT_METRICS: dict[str, tuple[str, ...]] = {}


def register_metric(name: str, *, split_tasks: tuple[str, ...] = ()) -> Callable[[F], F]:
    """Register ``fn`` under ``name`` in :data:`METRICS`; a name can be registered only once.

    Args:
        name: The metric's name (a split's key in a result: ``val_<name>``, ``test_<name>``).
        split_tasks: The tasks for which ``compute_eval_metrics`` reports it on every split. Such a
            metric takes ``(probs, labels)`` and any of the keywords ``task`` and ``n_bins``, and
            returns a number or a value with ``as_metrics(name) -> dict``.
    """

    if not isinstance(name, str) or not name:
        raise ValueError(f"metric name must be a non-empty string, got {name!r}")

    def decorator(fn: F) -> F:
        existing = METRICS.get(name)
        if existing is not None and existing is not fn:
            raise ValueError(f"metric {name!r} is already registered ({existing.__module__}.{existing.__qualname__})")
        METRICS[name] = fn
        if split_tasks:
            SPLIT_METRICS[name] = tuple(split_tasks)
        return fn

    return decorator


# The submodules import ``register_metric`` from this (partially initialised) package, so these
# imports must stay below its definition.
from . import alignment, calibration, classification, invariance, sparsity  # noqa: E402
from .alignment import (  # noqa: E402
    AlignmentSummary,
    alignment_summary,
    final_layer_cosines,
    gradient_weight_alignment,
    linear_ce_per_sample_grads,
    per_sample_cosine,
)
from .calibration import (  # noqa: E402
    ReliabilityBin,
    brier_score,
    expected_calibration_error,
    reliability_bins,
)
from .classification import (  # noqa: E402
    SINGLE_LABEL_TASKS,
    TASKS,
    AUCResult,
    accuracy,
    auc,
    roc_auc_binary,
    scores_to_probs,
)
from .invariance import InvarianceGap, invariance_gap, rotate90, rotate_batch, rotate_bilinear  # noqa: E402
from .sparsity import l0_eps  # noqa: E402


def compute_eval_metrics(
    scores: Any,
    labels: Any,
    *,
    task: str,
    from_logits: bool = False,
    n_bins: int = 15,
) -> dict[str, Any]:
    """Evaluation metrics of one split as a JSON-ready dict.

    ``scores`` are probabilities (softmax rows for single-label tasks, per-label sigmoids for
    ``"multi-label, binary-class"``) or, with ``from_logits=True``, raw logits that are turned
    into probabilities by :func:`scores_to_probs`. ``labels`` are ints, shape ``[N]`` or ``[N, L]``.

    Keys:

    - ``n``: number of samples.
    - then every metric of :data:`SPLIT_METRICS` registered for ``task``, in registration order:
      ``acc`` (:func:`accuracy`, MedMNIST Evaluator definition); ``auc`` (:func:`auc`, a float or
      ``None`` when it is undefined for every class), with ``auc_undefined_classes`` (classes/labels
      skipped because the split lacks positives or negatives for them, empty list when none) and
      ``auc_reason`` (why, or None); ``brier`` and ``ece`` (``n_bins`` equal-width bins) only for
      single-label tasks (multi-class, binary-class, ordinal-regression): the papers define neither
      for multi-label tasks.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    probs = scores_to_probs(scores, task=task) if from_logits else np.asarray(scores, dtype=np.float64)
    options = {"task": task, "n_bins": n_bins}
    out: dict[str, Any] = {"n": int(np.asarray(probs).shape[0])}
    for name, tasks in SPLIT_METRICS.items():
        if task not in tasks:
            continue
        fn = METRICS[name]
        accepted = inspect.signature(fn).parameters
        value = fn(probs, labels, **{k: v for k, v in options.items() if k in accepted})
        out.update(value.as_metrics(name) if hasattr(value, "as_metrics") else {name: value})
    return out


__all__ = [
    "METRICS",
    "SPLIT_METRICS",
    "register_metric",
    "compute_eval_metrics",
    "SINGLE_LABEL_TASKS",
    "TASKS",
    "AUCResult",
    "accuracy",
    "auc",
    "roc_auc_binary",
    "scores_to_probs",
    "ReliabilityBin",
    "brier_score",
    "expected_calibration_error",
    "reliability_bins",
    "l0_eps",
    "AlignmentSummary",
    "alignment_summary",
    "final_layer_cosines",
    "gradient_weight_alignment",
    "linear_ce_per_sample_grads",
    "per_sample_cosine",
    "InvarianceGap",
    "invariance_gap",
    "rotate_batch",
    "rotate_bilinear",
    "rotate90",
    "alignment",
    "calibration",
    "classification",
    "invariance",
    "sparsity",
]
