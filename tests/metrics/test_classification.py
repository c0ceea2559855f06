"""Accuracy / AUC (MedMNIST Evaluator definitions) against hand-computed values.

ROC AUC expectations are worked out by hand in the comments and re-checked by a brute-force count
of concordant (positive, negative) pairs (``_auc_pairs``), independent of sklearn.
"""

import json
import math

import numpy as np
import pytest
import torch

from reproduce.metrics import (
    METRICS,
    AUCResult,
    accuracy,
    auc,
    compute_eval_metrics,
    register_metric,
    roc_auc_binary,
    scores_to_probs,
)


def _auc_pairs(y, s):
    """Brute force: share of (positive, negative) pairs with s_pos > s_neg, ties counting 1/2."""
    pos = [float(v) for v, t in zip(s, y) if t == 1]
    neg = [float(v) for v, t in zip(s, y) if t == 0]
    total = 0.0
    for a in pos:
        for b in neg:
            total += 1.0 if a > b else (0.5 if a == b else 0.0)
    return total / (len(pos) * len(neg))


# 4 samples, 3 classes; argmax = [0, 1, 2, 0]
P3 = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4], [0.5, 0.4, 0.1]])
Y3 = np.array([0, 1, 1, 2])


def test_registry_names_and_duplicate_rejected():
    assert {"acc", "auc", "brier", "ece", "reliability", "l0_eps", "gw_alignment", "invariance_gap"} <= set(METRICS)
    assert METRICS["acc"] is accuracy
    with pytest.raises(ValueError):
        register_metric("acc")(lambda: None)
    with pytest.raises(ValueError):
        register_metric("")


def test_multiclass_accuracy_hand():
    # argmax [0,1,2,0] vs labels [0,1,1,2]: 2 of 4 correct
    assert accuracy(P3, Y3, task="multi-class") == 0.5
    assert accuracy(P3, Y3[:, None], task="multi-class") == 0.5  # labels [N, 1]
    assert accuracy(P3, Y3, task="ordinal-regression") == 0.5


def test_multiclass_auc_hand():
    # class 0: pos {.7} vs neg {.1,.3,.5} -> 3/3 = 1
    # class 1: pos {.8,.3} vs neg {.2,.4}: .8>.2 .8>.4 .3>.2 .3<.4 -> 3/4
    # class 2: pos {.1} vs neg {.1,.1,.4}: tie, tie, less -> (0.5+0.5+0)/3 = 1/3
    expected = [1.0, 0.75, 1.0 / 3.0]
    for k in range(3):
        assert _auc_pairs((Y3 == k).astype(int), P3[:, k]) == pytest.approx(expected[k])
    res = auc(P3, Y3, task="multi-class")
    assert isinstance(res, AUCResult)
    assert res.value == pytest.approx((1.0 + 0.75 + 1.0 / 3.0) / 3.0)
    assert res.per_class == pytest.approx(tuple(expected))
    assert res.undefined_classes == () and res.reason is None
    assert auc(P3, Y3, task="ordinal-regression").value == pytest.approx(res.value)


def test_roc_auc_binary_matches_bruteforce_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = int(rng.integers(2, 30))
        y = rng.integers(0, 2, size=n)
        y[0], y[1] = 0, 1
        s = np.round(rng.random(n), 1)  # many ties
        assert roc_auc_binary(y, s) == pytest.approx(_auc_pairs(y, s), abs=1e-12)
    with pytest.raises(ValueError):
        roc_auc_binary([1, 1, 1], [0.1, 0.2, 0.3])


def test_all_correct_onehot():
    p = np.eye(3)[[0, 1, 2, 1]]
    y = np.array([0, 1, 2, 1])
    assert accuracy(p, y, task="multi-class") == 1.0
    assert auc(p, y, task="multi-class").value == 1.0


def test_all_wrong_onehot():
    # predictions (y+1) % 3 with probability 1. Column k: the positive scores 0, the negatives
    # score 0 (tie, 1/2) and 1 (loss, 0) -> AUC 1/4 for every class.
    y = np.array([0, 1, 2])
    p = np.eye(3)[(y + 1) % 3]
    assert accuracy(p, y, task="multi-class") == 0.0
    for k in range(3):
        assert _auc_pairs((y == k).astype(int), p[:, k]) == 0.25
    assert auc(p, y, task="multi-class").value == pytest.approx(0.25)


def test_absent_class_is_skipped_and_reported():
    p = np.array([[0.6, 0.3, 0.1], [0.4, 0.4, 0.2], [0.3, 0.5, 0.2], [0.5, 0.2, 0.3]])
    y = np.array([0, 0, 1, 1])  # class 2 absent
    # class 0: pos {.6,.4} vs neg {.3,.5}: 1,1,1,0 -> 3/4 ; class 1: pos {.5,.2} vs neg {.3,.4}: 1,1,0,0 -> 1/2
    assert _auc_pairs((y == 0).astype(int), p[:, 0]) == 0.75
    assert _auc_pairs((y == 1).astype(int), p[:, 1]) == 0.5
    res = auc(p, y, task="multi-class")
    assert res.value == pytest.approx(0.625)
    assert res.undefined_classes == (2,)
    assert res.per_class[2] is None
    assert "no positive" in res.reason and "[2]" in res.reason
    assert not math.isnan(res.value)
    out = compute_eval_metrics(p, y, task="multi-class")
    assert out["auc"] == pytest.approx(0.625)
    assert out["auc_undefined_classes"] == [2]
    assert out["auc_reason"]


def test_single_sample_multiclass():
    p = np.array([[0.2, 0.5, 0.3]])
    assert accuracy(p, [1], task="multi-class") == 1.0
    assert accuracy(p, [[2]], task="multi-class") == 0.0
    res = auc(p, [1], task="multi-class")
    # class 1 has no negatives, classes 0 and 2 no positives
    assert res.value is None
    assert res.undefined_classes == (0, 1, 2)
    assert "every class" in res.reason
    out = compute_eval_metrics(p, [1], task="multi-class")
    assert out["auc"] is None and out["n"] == 1


def test_binary_class_threshold_and_auc():
    last = np.array([0.2, 0.5, 0.9, 0.6, 0.7])
    y = np.array([0, 1, 1, 0, 1])
    p2 = np.stack([1 - last, last], axis=1)
    # preds (p > 0.5, strict): [0,0,1,1,1] vs [0,1,1,0,1] -> 3/5
    for p in (p2, last, last[:, None]):
        assert accuracy(p, y, task="binary-class") == pytest.approx(0.6)
    # pos {.5,.9,.7} vs neg {.2,.6}: .5 -> 1,0 ; .9 -> 1,1 ; .7 -> 1,1 = 5/6
    assert _auc_pairs(y, last) == pytest.approx(5 / 6)
    for p in (p2, last, last[:, None]):
        res = auc(p, y, task="binary-class")
        assert res.value == pytest.approx(5 / 6) and res.undefined_classes == ()
    # a 3-column binary output uses the last column, as the Evaluator does
    p3 = np.stack([np.zeros(5), 1 - last, last], axis=1)
    assert auc(p3, y, task="binary-class").value == pytest.approx(5 / 6)


def test_binary_class_one_class_split():
    res = auc(np.array([[0.3, 0.7], [0.6, 0.4]]), [0, 0], task="binary-class")
    assert res.value is None and res.undefined_classes == (1,)
    assert "only class 0" in res.reason
    assert accuracy(np.array([[0.3, 0.7], [0.6, 0.4]]), [0, 0], task="binary-class") == 0.5


def test_multilabel_hand():
    p = np.array([[0.9, 0.6], [0.2, 0.4], [0.7, 0.8], [0.4, 0.3]])
    y = np.array([[1, 0], [0, 1], [0, 0], [1, 1]])
    # label 0: preds [1,0,1,0] vs [1,0,0,1] -> 1/2 ; label 1: preds [1,0,1,0] vs [0,1,0,1] -> 0
    assert accuracy(p, y, task="multi-label, binary-class") == pytest.approx(0.25)
    # label 0: pos {.9,.4} vs neg {.2,.7}: 1,1,1,0 -> 3/4 ; label 1: pos {.4,.3} vs neg {.6,.8} -> 0
    assert _auc_pairs(y[:, 0], p[:, 0]) == 0.75 and _auc_pairs(y[:, 1], p[:, 1]) == 0.0
    res = auc(p, y, task="multi-label, binary-class")
    assert res.value == pytest.approx(0.375) and res.per_class == pytest.approx((0.75, 0.0))


def test_multilabel_label_without_negatives():
    p = np.array([[0.9, 0.6], [0.2, 0.4], [0.7, 0.8], [0.4, 0.3]])
    y = np.array([[1, 1], [0, 1], [0, 1], [1, 1]])
    res = auc(p, y, task="multi-label, binary-class")
    assert res.value == pytest.approx(0.75)
    assert res.undefined_classes == (1,)
    assert "label" in res.reason and "no negative" in res.reason
    out = compute_eval_metrics(p, y, task="multi-label, binary-class")
    assert "brier" not in out and "ece" not in out
    assert out["acc"] == pytest.approx(0.5)  # label 0: 2/4 ; label 1: preds [1,0,1,0] vs all 1 -> 2/4


def test_scores_to_probs_hand():
    probs = scores_to_probs(np.array([[0.0, math.log(2), math.log(3)]]), task="multi-class")
    assert probs == pytest.approx(np.array([[1 / 6, 2 / 6, 3 / 6]]))
    sig = scores_to_probs(np.array([[0.0, math.log(3)], [-1000.0, 1000.0]]), task="multi-label, binary-class")
    assert sig == pytest.approx(np.array([[0.5, 0.75], [0.0, 1.0]]))
    assert scores_to_probs(np.array([math.log(3)]), task="binary-class") == pytest.approx([0.75])
    assert scores_to_probs(np.array([[0.0, math.log(3)]]), task="binary-class")[0] == pytest.approx([0.25, 0.75])


def test_compute_eval_metrics_hand_and_json():
    out = compute_eval_metrics(P3, Y3, task="multi-class")
    assert set(out) == {"n", "acc", "auc", "auc_undefined_classes", "auc_reason", "brier", "ece"}
    assert out["acc"] == 0.5
    assert out["auc"] == pytest.approx((1.0 + 0.75 + 1.0 / 3.0) / 3.0)
    # Brier: .14 + .06 + .74 + 1.22 = 2.16 / 4
    assert out["brier"] == pytest.approx(0.54)
    # ECE: one sample per bin, |acc - conf| = .3 .2 .4 .5 -> 1.4 / 4
    assert out["ece"] == pytest.approx(0.35)
    json.dumps(out)


def test_compute_eval_metrics_from_logits():
    # softmax(log p) = p up to rounding (which breaks the exact .1 ties, so no exact AUC here)
    logits = torch.log(torch.tensor(P3))
    out = compute_eval_metrics(logits, torch.tensor(Y3), task="multi-class", from_logits=True)
    assert out["acc"] == 0.5
    assert out["brier"] == pytest.approx(0.54) and out["ece"] == pytest.approx(0.35)
    ref = compute_eval_metrics(scores_to_probs(logits, task="multi-class"), Y3, task="multi-class")
    assert out == ref


def test_input_validation():
    with pytest.raises(ValueError):
        accuracy(P3, Y3, task="regression")
    with pytest.raises(ValueError):
        accuracy(P3, np.array([0, 1, 3, 0]), task="multi-class")  # label out of range
    with pytest.raises(ValueError):
        accuracy(np.array([[np.nan, 1.0]]), [0], task="multi-class")
    with pytest.raises(ValueError):
        auc(P3, Y3[:3], task="multi-class")
    with pytest.raises(ValueError):
        accuracy(np.zeros((0, 3)), np.zeros(0, dtype=int), task="multi-class")
    with pytest.raises(ValueError):
        auc(np.array([0.2, 0.8]), [0, 2], task="binary-class")


@pytest.mark.parametrize(
    "task,shape",
    [
        ("multi-class", (40, 4)),
        ("ordinal-regression", (40, 5)),
        ("binary-class", (40, 2)),
        ("multi-label, binary-class", (40, 3)),
    ],
)
def test_agrees_with_medmnist_evaluator(task, shape, tmp_path, monkeypatch):
    """Cross-check against medmnist 3.0.2's getACC/getAUC when every class is present."""
    monkeypatch.setenv("HOME", str(tmp_path))  # importing medmnist.info creates ~/.medmnist
    evaluator = pytest.importorskip("medmnist.evaluator")
    rng = np.random.default_rng(1)
    n, c = shape
    if task == "multi-label, binary-class":
        y = rng.integers(0, 2, size=shape)
        y[0], y[1] = 0, 1
        p = rng.random(shape)
    else:
        y = rng.integers(0, c, size=(n, 1))
        y[:c, 0] = np.arange(c)
        p = rng.random(shape)
        p /= p.sum(axis=1, keepdims=True)
    assert accuracy(p, y, task=task) == pytest.approx(evaluator.getACC(y, p, task))
    assert auc(p, y, task=task).value == pytest.approx(evaluator.getAUC(y, p, task))


def test_compute_eval_metrics_evaluates_exactly_the_registered_split_metrics(monkeypatch):
    from reproduce.metrics import SPLIT_METRICS

    def share_of_class_0(probs, labels, *, task):  # a new split metric: one function, one registration
        return float(np.mean(np.asarray(labels).ravel() == 0))

    monkeypatch.setitem(METRICS, "share0", share_of_class_0)
    monkeypatch.setitem(SPLIT_METRICS, "share0", ("multi-class",))
    monkeypatch.delitem(SPLIT_METRICS, "brier")
    out = compute_eval_metrics(P3, Y3, task="multi-class")
    assert out["share0"] == pytest.approx(np.mean(np.asarray(Y3) == 0)) and "brier" not in out and "ece" in out
    assert list(out) == ["n", "acc", "auc", "auc_undefined_classes", "auc_reason", "ece", "share0"]
    assert "share0" not in compute_eval_metrics(
        P3[:, :2] / P3[:, :2].sum(1, keepdims=True), np.asarray(Y3) % 2, task="binary-class"
    )
