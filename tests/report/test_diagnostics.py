"""The diagnostics figures and summary: means over seeds and steps by hand, lines per DP-only axes."""

from __future__ import annotations

import dataclasses

import pytest

from reproduce.records.result import CellResult
from reproduce.report.diagnostics import (
    axis_means,
    diagnostic_series,
    diagnostics_section,
    diagnostics_summary,
    write_diagnostics_figures,
)
from reproduce.report.html import render_diagnostics, render_page
from reproduce.report.sections import report_sections
from reproduce.study import parse_study
from tests.report.conftest import fake_result

STUDY = parse_study("""\
name: fake
model:
  widths: {e: [8, 16, 32], C4: [8, 16, 32]}
training:
  epochs: 1
  dp_optimizer: {name: sgd, lr: {sgd: 0.5, adam: 0.002}}
grid:
  dataset: [embedded]
  group: [e, C4]
  epsilon: [non-private, 7.42]
  multiplicity: [1]
  seed: [0, 1]
  training.dp_optimizer.name: [sgd, adam]
""")


def _share(cell, step: int) -> float:
    # C4 clips less than e, adam more than sgd; seed 1 adds 0.1; later steps clip less
    return (
        0.8
        - 0.2 * (cell.group == "C4")
        + 0.05 * (cell.axis("training.dp_optimizer.name") == "adam")
        + 0.1 * cell.seed
        - 0.01 * step
    )


def _result(cell) -> CellResult:
    record = fake_result(cell, reliability=False)
    record["metrics"]["test_acc"] = 0.5 + 0.1 * (cell.group == "C4") + 0.01 * cell.seed
    for row in record["steps"]:
        if cell.private:
            row.update(
                share_clipped=_share(cell, row["step"]),
                grad_norm_q10=1.0,
                grad_norm_q50=2.0,
                grad_norm_q90=4.0,
                clip_bias_cosine=0.9,
                clip_bias_norm_ratio=0.5,
                noise_to_signal=10.0 + cell.seed,
                update_cosine=0.1,
                max_grad_norm=1.0 + row["step"],
            )
        else:
            row["update_cosine"] = 0.9 - 0.1 * cell.seed
    return CellResult.from_json(record)


RESULTS = {c.id: _result(c) for c in STUDY.cells()}


def _cells(**where):
    return [
        RESULTS[c.id]
        for c in STUDY.cells()
        if all((c.axis(k.replace("__", ".")) if "__" in k else getattr(c, k)) == v for k, v in where.items())
    ]


def test_series_is_the_mean_over_seeds_at_each_logged_step():
    recs = _cells(group="e", epsilon=7.42, training__dp_optimizer__name="adam")
    assert len(recs) == 2
    steps, values = diagnostic_series(recs, "share_clipped")
    assert steps == [1, 5, 10]
    assert values == pytest.approx([0.85 + 0.05 - 0.01 * s for s in (1, 5, 10)])
    assert diagnostic_series(recs, "no_such_key") == ([], [])


def test_summary_rows_per_dp_line_and_non_private_reference():
    rows = diagnostics_summary(STUDY, RESULTS)
    # per group: the non-private reference, then one row per optimizer
    keys = [(r.group, r.epsilon, tuple(v for _, v in r.axes)) for r in rows]
    assert keys == [
        ("e", "non-private", ()),
        ("C4", "non-private", ()),
        ("e", 7.42, ("sgd",)),
        ("e", 7.42, ("adam",)),
        ("C4", 7.42, ("sgd",)),
        ("C4", 7.42, ("adam",)),
    ]
    e_sgd = rows[2]
    # mean over steps (1, 5, 10) and seeds (0, 1) of 0.8 + 0.1 seed - 0.01 step
    assert e_sgd.step_means["share_clipped"] == pytest.approx(0.8 + 0.05 - 0.01 * 16 / 3)
    assert e_sgd.step_means["noise_to_signal"] == pytest.approx(10.5)
    assert e_sgd.max_grad_norm_last == 11.0  # C at the last logged step
    assert e_sgd.test_acc == pytest.approx(0.505) and e_sgd.n == 2
    reference = rows[0]
    assert reference.step_means["update_cosine"] == pytest.approx(0.85)
    assert reference.step_means["share_clipped"] is None


def test_axis_means_compare_optimisers_and_groups():
    means = axis_means(STUDY, diagnostics_summary(STUDY, RESULTS))
    share = {m.value: m.share_clipped for m in means["group"]}
    assert share["e"] - share["C4"] == pytest.approx(0.2)  # C4 clips fewer samples
    opt = {m.value: m.share_clipped for m in means["training.dp_optimizer.name"]}
    assert opt["adam"] - opt["sgd"] == pytest.approx(0.05)
    assert next(m for m in means["group"] if m.value == "C4").test_acc == pytest.approx(0.605)


def test_one_figure_per_group_and_the_summary_in_the_page(tmp_path):
    figures = write_diagnostics_figures(STUDY, RESULTS, tmp_path)
    assert [f.path.name for f in figures] == [
        "diagnostics-embedded-eps7.42-k1-e.png",
        "diagnostics-embedded-eps7.42-k1-C4.png",
    ]
    assert all(f.path.stat().st_size > 0 and f.kind == "diagnostics" for f in figures)
    html = render_diagnostics(diagnostics_section(STUDY, RESULTS))
    assert "training.dp_optimizer.name" in html and "<td>adam</td>" in html


def test_results_without_diagnostics_get_no_figure(tmp_path):
    plain = {k: CellResult.from_json(fake_result(c, reliability=False)) for c in STUDY.cells() for k in [c.id]}
    assert write_diagnostics_figures(STUDY, plain, tmp_path) == []
    assert diagnostics_section(STUDY, plain) is None and render_diagnostics(None) == ""


def test_the_page_renders_the_stages_summary_and_recomputes_nothing():
    report = report_sections(STUDY, RESULTS, {})
    assert report.diagnostics.rows == tuple(diagnostics_summary(STUDY, RESULTS))
    assert '<table class="diagnostics">' in render_page(report, [])
    # The page shows what the stage computed: without the summary there is no table, although every
    # result still has its step diagnostics.
    assert '<table class="diagnostics">' not in render_page(dataclasses.replace(report, diagnostics=None), [])
