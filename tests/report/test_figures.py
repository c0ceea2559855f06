"""Figure 1 and reliability diagrams: aggregation hand-computed, PNGs opened by PIL."""

from __future__ import annotations

import pytest
from PIL import Image

from reproduce.metrics.calibration import ReliabilityBin
from reproduce.report.figures import accuracy_by_size, mean_epoch_series, mean_series, pooled_reliability, write_figures
from reproduce.report.stage import read_results
from reproduce.study import parse_study
from tests.report.conftest import partial_result


def _bins(s: int, upper: float = 0.5) -> list[dict]:
    return [
        {"lower": 0.0, "upper": upper, "count": 10 * (1 + s), "confidence": 0.4, "accuracy": 0.3 + 0.3 * s},
        {"lower": upper, "upper": 1.0, "count": 0, "confidence": None, "accuracy": None},
    ]


def test_report_pooled_reliability_is_count_weighted():
    # fake bins: seed 0 bin 2 has 10 samples at accuracy 0.3, seed 1 has 20 at 0.6 -> (3 + 12) / 30
    recs = [partial_result(metrics_detail={"reliability_test": _bins(s)}) for s in (0, 1)]
    bins = pooled_reliability(recs)
    assert bins[0].count == 30 and bins[0].accuracy == pytest.approx(0.5) and bins[0].confidence == pytest.approx(0.4)
    assert bins[1] == ReliabilityBin(lower=0.5, upper=1.0, count=0, confidence=None, accuracy=None)
    assert pooled_reliability([partial_result(), partial_result(metrics_detail={})]) is None  # absent: no diagram
    recs[1] = partial_result(metrics_detail={"reliability_test": _bins(1, upper=0.4)})
    with pytest.raises(ValueError, match="differ"):
        pooled_reliability(recs)


def _steps(*pairs) -> list[dict]:
    return [{"step": step, "epoch": 0, "loss": 1.0, "l0_update": value} for step, value in pairs]


def test_report_mean_series_and_accuracy_by_size():
    recs = [
        partial_result(
            steps=_steps((1, 0.1), (5, 0.3), (9, 0.5)), widths=[8, 16, 32], metrics={"test_acc": 0.8, "parameters": 100}
        ),
        partial_result(
            steps=_steps((1, 0.2), (5, 0.5)), widths=[8, 16, 32], metrics={"test_acc": 0.9, "parameters": 100}
        ),
        partial_result(steps=[], widths=[4, 8, 16], metrics={"test_acc": 0.7, "parameters": 30}),
    ]
    assert mean_series(recs, "l0_update") == ([1, 5], [pytest.approx(0.15), pytest.approx(0.4)])
    assert mean_series(recs, "l0_clipped") == ([], [])
    points = accuracy_by_size(recs)
    assert [p.widths for p in points] == [(4, 8, 16), (8, 16, 32)]  # sorted by parameter count
    assert points[1].mean == pytest.approx(0.85) and points[1].n == 2 and points[0].std == 0.0


def test_report_mean_epoch_series_keeps_epochs_every_seed_has():
    recs = [
        partial_result(
            epochs=[
                {"epoch": 0, "loss": 1.0, "gwa": 0.1},
                {"epoch": 1, "loss": 1.0, "gwa": 0.3},
                {"epoch": 2, "loss": 1.0, "gwa": None},
            ]
        ),
        partial_result(
            epochs=[
                {"epoch": 0, "loss": 1.0, "gwa": 0.2},
                {"epoch": 1, "loss": 1.0, "gwa": 0.5},
                {"epoch": 2, "loss": 1.0, "gwa": 0.4},
            ]
        ),
        partial_result(epochs=[{"epoch": 0, "loss": 1.0}]),
    ]  # never recorded: left out
    assert mean_epoch_series(recs) == ([0, 1], [pytest.approx(0.15), pytest.approx(0.4)])
    assert mean_epoch_series([partial_result(epochs=[])]) == ([], [])


def test_report_figures_are_valid_pngs(fake_report):
    _, _, paths = fake_report
    pngs = sorted(p.name for p in paths if p.suffix == ".png")
    # one Figure 1, GWA plot and reliability diagram per DP setting (2 datasets x 1 epsilon x 2 multiplicities)
    assert pngs == sorted(
        f"{k}-{d}-eps7.42-k{m}.png"
        for k in ("figure1", "alignment", "reliability")
        for d in ("bloodmnist", "embedded")
        for m in (1, 4)
    )
    for path in paths:
        if path.suffix == ".png":
            with Image.open(path) as im:
                im.verify()
            with Image.open(path) as im:
                assert im.format == "PNG" and im.width >= 600 and im.height >= 300


def test_report_without_reliability_bins_or_steps_still_draws_figure1(fake_study, write_fake_results, tmp_path):
    fake_study = parse_study(FAKE_ONE_DATASET)
    results = read_results(fake_study, write_fake_results(fake_study, reliability=False, steps=False))
    figures = write_figures(fake_study, results, tmp_path / "out")
    assert [f.kind for f in figures] == ["figure1"] and figures[0].caption
    with Image.open(figures[0].path) as im:
        im.verify()


FAKE_ONE_DATASET = """\
name: one
training: {epochs: 1}
grid: {dataset: [bloodmnist], group: [e, C4], epsilon: [7.42], multiplicity: [1], seed: [0]}
"""
