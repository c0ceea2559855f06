"""Accuracy over epsilon and over compute: aggregation by hand, anchors, and the figures."""

from __future__ import annotations

import pytest

from reproduce.report.trends import anchors_for, compute_rows, draw_over_compute, draw_over_epsilon, to_markdown
from reproduce.study import parse_study

STUDY = """\
name: trends
training: {epochs: 1}
grid: {dataset: [cifar10], group: [e, D4], epsilon: [non-private, 1, 8], multiplicity: [4], seed: [0, 1]}
"""


class Fake:
    def __init__(self, **metrics):
        self.metrics = metrics

    def metric(self, name):
        return self.metrics.get(name)


@pytest.fixture
def study_and_results():
    study = parse_study(STUDY)
    acc = {("e", 1): 0.5, ("e", 8): 0.7, ("D4", 1): 0.6, ("D4", 8): 0.8}
    results = {}
    for c in study.cells():
        base = acc.get((c.group, c.epsilon), 0.9)
        results[c.id] = Fake(
            test_acc=base + 0.02 * c.seed,
            train_flops=1e15 * (2 if c.group == "e" else 1),
            parameters=100 if c.group == "e" else 10,
        )
    return study, results


def test_rows_are_means_over_seeds(study_and_results):
    study, results = study_and_results
    rows = {(r.group, r.epsilon): r for r in compute_rows(study, results)}
    r = rows[("D4", 8)]
    assert r.n == 2 and r.test_acc == pytest.approx(0.81) and r.test_acc_std == pytest.approx(0.0141421356)
    assert r.train_flops == 1e15 and r.parameters == 10
    md = to_markdown(list(rows.values()))
    assert "| cifar10 | D4 | DP eps=8, aug x4 | 2 | 10 | 1 | 81.00 ± 1.41 |" in md


def test_published_anchors_only_at_the_same_delta(study_and_results):
    study, _ = study_and_results
    labels = [a.label for a in anchors_for(study, "cifar10")]
    assert any("Klause" in x for x in labels) and any("De et al." in x for x in labels)
    other = parse_study(STUDY.replace("training:", "privacy: {delta: 1.0e-6}\ntraining:"))
    assert anchors_for(other, "cifar10") == ()


def test_figures_are_drawn_and_skipped_when_meaningless(study_and_results, tmp_path):
    study, results = study_and_results
    rows = compute_rows(study, results)
    assert draw_over_epsilon(study, rows, "cifar10", tmp_path / "eps.png").path.stat().st_size > 1000
    assert draw_over_compute(study, rows, "cifar10", tmp_path / "flops.png").path.stat().st_size > 1000
    one = parse_study(STUDY.replace("[non-private, 1, 8]", "[non-private, 8]"))
    assert draw_over_epsilon(one, compute_rows(one, results), "cifar10", tmp_path / "x.png") is None
