"""What is measured on a trained model: the split metrics of the metric registry on val and test,
the test reliability diagram, and the rotation-invariance gaps; all on weights only (no training data).
"""

from __future__ import annotations

import dataclasses

import torch

from reproduce.data.base import Splits
from reproduce.metrics import compute_eval_metrics
from reproduce.metrics.calibration import ReliabilityBin, reliability_bins
from reproduce.metrics.invariance import invariance_gap
from reproduce.training.task import multi_label, predict_proba, to_tensor

EVAL_SPLITS = ("val", "test")
# 90 degrees is exact on the pixel grid; 45 degrees bilinear, corners filled with zeros (mid-grey).
ROTATIONS = (90, 45)


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """Metrics of the trained weights.

    Attributes:
        metrics: ``<split>_<metric>`` for every registry split metric of the task, then (single-label
            tasks) ``test_acc_rot<angle>`` and ``rot<angle>_gap`` per rotation angle.
        reliability_test: Reliability-diagram bins on the test split; None for multi-label tasks.
    """

    metrics: dict
    reliability_test: tuple[ReliabilityBin, ...] | None


def evaluate(model: torch.nn.Module, splits: Splits, *, task: str, batch_size: int, ema=None) -> Evaluation:
    """Evaluate ``model`` on the val and test splits of ``splits``.

    Args:
        model: The trained model (left in training mode).
        splits: The dataset; its training split is not read.
        task: The dataset's task.
        batch_size: Evaluation batch size.
        ema: The weights' moving average (``reproduce.training.ema.EMA``): evaluated, and left in
            the model, in place of the last weights, as the follow-up paper does.
    """
    if ema is not None:
        ema.copy_to_weights()
    # Each split goes to the model's device once; predictions come back once (the metrics, the
    # reliability bins and the accuracies are computed on the host, in float64).
    device = next(model.parameters()).device
    metrics, bins = {}, None
    for split in EVAL_SPLITS:
        probs = predict_proba(model, to_tensor(splits.images(split)).to(device), task=task, batch_size=batch_size)
        for name, value in compute_eval_metrics(probs, splits.labels(split), task=task).items():
            metrics[f"{split}_{name}"] = value
        if split == "test" and not multi_label(task):
            bins = tuple(reliability_bins(probs, splits.labels(split)))
    if not multi_label(task):
        # Rotation-invariance gap: accuracy on the rotated test set minus accuracy on the test set.
        model.eval()
        # Rotated on the device too (grid_sample there: last-bit differences from the CPU at 45 degrees).
        x_test, y_test = to_tensor(splits.images("test")).to(device), splits.labels("test")[:, 0]
        for angle in ROTATIONS:
            gap = invariance_gap(model, x_test, y_test, angle, batch_size=batch_size)
            metrics[f"test_acc_rot{angle}"], metrics[f"rot{angle}_gap"] = gap.acc_rotated, gap.gap
        model.train()
    return Evaluation(metrics=metrics, reliability_test=bins)
