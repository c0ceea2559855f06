"""Table 1 from fake results: values hand-computed from tests/report/conftest.py (seed 1 = seed 0 + 0.02)."""

from __future__ import annotations

import csv
import io
import json
import math
import re

import pytest

from reproduce.errors import ReproduceError
from reproduce.records.result import CellResult
from reproduce.report.paper_values import load_published, published_for
from reproduce.report.sections import build_tables
from reproduce.report.stage import read_results, write_tables
from reproduce.report.table import build_table, to_csv, to_latex, to_markdown, to_summary
from reproduce.study import parse_study
from tests.report.conftest import FAKE_STUDY, fake_result

STD2 = 0.02 / math.sqrt(2)  # sample std of {v, v + 0.02}


@pytest.fixture
def results(fake_study, write_fake_results):
    return read_results(fake_study, write_fake_results(fake_study))


def _row(table, dataset, group):
    return next(r for r in table.rows if (r.dataset, r.group) == (dataset, group))


def test_report_mean_std_best_and_gaps(fake_study, results):
    t = build_table(fake_study, results, metric="val_acc")
    assert t.labels == ["non-DP, no aug", "non-DP, aug x4", "DP eps=7.42, no aug", "DP eps=7.42, aug x4"]
    assert [c.gap_label for c in t.gap_columns] == ["DP gap eps=7.42, no aug", "DP gap eps=7.42, aug x4"]
    e, c4 = _row(t, "bloodmnist", "e"), _row(t, "bloodmnist", "C4")
    s = e.cell("non-DP, no aug")  # seeds 0.90, 0.92
    assert s.mean == pytest.approx(0.91) and s.std == pytest.approx(STD2) and s.n == 2
    assert s.values == pytest.approx((0.90, 0.92))
    assert c4.cell("DP eps=7.42, aug x4").mean == pytest.approx(0.91)
    # bold = best group per dataset and column, as in the paper
    assert [c.best for c in e.cells] == [False, True, False, False]
    assert [c.best for c in c4.cells] == [True, False, True, True]
    # a tie (embedded, non-DP, no aug: 0.71 both) bolds both
    assert _row(t, "embedded", "e").cell("non-DP, no aug").best
    assert _row(t, "embedded", "C4").cell("non-DP, no aug").best
    # DP gap = non-DP minus DP at the same augmentation: e no aug 0.91 - 0.81, C4 aug 0.93 - 0.91
    assert e.gap("DP gap eps=7.42, no aug") == pytest.approx(0.10)
    assert c4.gap("DP gap eps=7.42, aug x4") == pytest.approx(0.02)
    assert e.parameters == 45_000 and _row(t, "embedded", "C4").parameters == 30_007


def test_report_paper_values_and_deltas_use_validation_accuracy(fake_study, results):
    paper = published_for(fake_study)
    assert paper is not None and paper.key == "bridging_the_gap" and "arXiv:2209.04338" in paper.citation
    t = build_table(fake_study, results, metric="val_acc")
    assert t.paper.metric == "val_acc" and t.paper.key == "bridging_the_gap"
    e, c4 = _row(t, "bloodmnist", "e"), _row(t, "bloodmnist", "C4")
    # bloodmnist e: non-DP no aug 94.05, aug 96.52; DP no aug 89.19; C4 DP aug 91.39 (the paper's Table 1)
    assert e.cell("non-DP, no aug").paper == pytest.approx(0.9405)
    assert e.cell("non-DP, no aug").delta == pytest.approx(0.91 - 0.9405)
    assert e.cell("non-DP, aug x4").delta == pytest.approx(0.94 - 0.9652)
    assert e.cell("DP eps=7.42, no aug").delta == pytest.approx(0.81 - 0.8919)
    assert c4.cell("DP eps=7.42, aug x4").delta == pytest.approx(0.91 - 0.9139)
    assert _row(t, "embedded", "e").cell("non-DP, no aug").paper is None  # not in the paper
    # test accuracy is never compared with the paper's validation numbers
    t_test = build_table(fake_study, results, metric="test_acc")
    assert t_test.paper is None and e.cell("non-DP, no aug").paper is not None
    assert all(s.paper is None for r in t_test.rows for s in r.cells)
    md = to_markdown(fake_study, [t, t_test])
    assert (
        "| bloodmnist | e | 45,000 | 91.00 ± 1.41 (paper 94.05, Δ -3.05) | **94.00 ± 1.41** (paper 96.52, Δ -2.52) |"
        in md
    )
    assert "| bloodmnist | C4 | 30,000 | **96.00 ± 1.41** (paper 95.35, Δ +0.65) |" in md
    assert "validation accuracy" in md.lower() and "Bridging the Gap" in md


def test_report_paper_lookup_needs_same_epsilon_and_delta():
    paper = load_published("bridging_the_gap")
    assert paper.lookup("pathmnist", "C16", 7.42, 1) == pytest.approx(89.14)
    assert paper.lookup("pathmnist", "C16", "non-private", 4) == pytest.approx(85.38)
    assert paper.lookup("pathmnist", "C16", 8, 1) is None
    assert paper.lookup("pathmnist", "C16", 7.42, 1, delta=1e-6) is None
    assert paper.lookup("embedded", "e", "non-private", 1) is None
    other = parse_study(FAKE_OTHER_EPS)
    assert published_for(other) is not None  # non-DP cells still match
    caveats = " ".join(published_for(other).caveats(other))
    assert "epsilon 3" in caveats and "widths of e differ" in caveats


FAKE_OTHER_EPS = """\
name: other
model: {widths: [4, 8, 8]}
training: {epochs: 1}
grid: {dataset: [dermamnist], group: [e], epsilon: [non-private, 3], seed: [0]}
"""


def test_report_single_seed_shows_no_std_and_missing_cells_are_refused(write_fake_results):
    study = parse_study(FAKE_OTHER_EPS.replace("[4, 8, 8]", "[8, 16, 32]").replace("dermamnist", "bloodmnist"))
    root = write_fake_results(study)
    t = build_table(study, read_results(study, root), metric="val_acc")
    assert "| bloodmnist | e | 45,000 | **90.00** (paper 94.05, Δ -4.05) | **80.00** | 10.00 |" in to_markdown(study, t)
    (root / "cells" / "bloodmnist-e-3-1-0" / "result.json").unlink()
    with pytest.raises(ReproduceError, match="bloodmnist-e-3-1-0"):
        write_tables(study, results_dir=root)


def test_report_write_tables_csv_and_summary(fake_study, write_fake_results):
    root = write_fake_results(fake_study)
    paths = write_tables(fake_study, results_dir=root)
    assert [p.name for p in paths] == ["table.md", "table.csv", "table.tex", "summary.json"]
    rows = list(csv.DictReader(io.StringIO((root / "table.csv").read_text())))
    cells = [r for r in rows if r["kind"] == "cell"]
    assert len(cells) == 2 * 4 * 4 and len([r for r in rows if r["kind"] == "gap"]) == 2 * 4 * 2
    r = next(
        r
        for r in cells
        if (r["dataset"], r["group"], r["metric"], r["column"]) == ("bloodmnist", "C4", "val_acc", "non-DP, no aug")
    )
    assert float(r["mean"]) == pytest.approx(0.96) and float(r["std"]) == pytest.approx(STD2, abs=1e-6)
    assert (
        r["best"] == "1"
        and float(r["paper"]) == pytest.approx(0.9535)
        and float(r["delta_vs_paper"]) == pytest.approx(0.0065)
    )
    summary = json.loads((root / "summary.json").read_text())
    assert all(isinstance(v, (int, float)) for v in summary.values())  # flat
    assert summary["bloodmnist/e/test_acc/non-DP, no aug"] == pytest.approx(0.90)
    assert summary["bloodmnist/e/test_acc/DP gap eps=7.42, no aug"] == pytest.approx(0.10)
    assert summary["bloodmnist/e/val_acc/non-DP, no aug/delta_vs_paper"] == pytest.approx(-0.0305)


# ---------------------------------------------------------------- LaTeX, checked syntactically


def _check_latex(tex: str) -> list[int]:
    """Balanced braces and environments; every tabular row has the spec's column count. Returns counts."""
    plain = re.sub(r"\\[{}&%$#_]", "", tex)
    plain = "\n".join(line.split("%", 1)[0] for line in plain.splitlines())  # comments
    depth = 0
    for ch in plain:
        depth += {"{": 1, "}": -1}.get(ch, 0)
        assert depth >= 0, "closing brace without opening"
    assert depth == 0, "unbalanced braces"
    assert plain.count("$") % 2 == 0, "unbalanced math"
    stack, counts, ncols = [], [], None
    for line in plain.splitlines():
        for kind, env in re.findall(r"\\(begin|end)\{(\w+)\}", line):
            if kind == "begin":
                stack.append(env)
            else:
                assert stack and stack.pop() == env, f"\\end{{{env}}} does not close {stack}"
        m = re.search(r"\\begin\{tabular\}\{([^}]*)\}", line)
        if m:
            ncols = len(re.findall(r"[lcr]", m.group(1)))
            counts.append(ncols)
        if line.rstrip().endswith("\\\\") and ncols is not None:
            spans = [int(n) for n in re.findall(r"\\multicolumn\{(\d+)\}", line)]
            cells = line.count("&") + 1
            assert cells - len(spans) + sum(spans) == ncols, f"row has wrong column count: {line}"
    assert not stack, f"unclosed environments {stack}"
    return counts


def test_report_latex_is_well_formed(fake_study, results):
    tex = to_latex(fake_study, build_tables(fake_study, results))
    assert _check_latex(tex) == [3 + 4 + 2, 3 + 4 + 2]
    assert r"\mathbf{96.00} \pm 1.41$ {\scriptsize(95.35; $+0.65$)}" in tex
    assert r"\begin{tabular}" in tex and r"\toprule" in tex and "val\\_acc" in tex


def test_report_latex_checker_catches_errors():
    with pytest.raises(AssertionError):
        _check_latex("\\begin{tabular}{lr}\na & b & c \\\\\n\\end{tabular}")
    with pytest.raises(AssertionError):
        _check_latex("\\begin{table}{x}\n\\end{tabular}")
    with pytest.raises(AssertionError):
        _check_latex("{\\textbf{x}")


# ---------------------------------------------------------------- rows split by dotted grid axes


def test_rows_split_by_dotted_axes_with_the_non_private_reference():
    from tests.conftest import TINY_STUDY

    study = parse_study(
        TINY_STUDY.format(name="tiny") + "  model.widths: [[4, 8, 8], [8, 8, 16]]\n  privacy.max_grad_norm: [0.5, 2]\n"
    )
    results = {}
    for c in study.cells():
        record = fake_result(c)
        # accuracy encodes the cell's layout and clipping norm, so pooling them would show
        record["metrics"]["val_acc"] = c.widths[0] / 100 + (c.axis("privacy.max_grad_norm") or 0) / 1000
        results[c.id] = CellResult.from_json(record)
    table = build_table(study, results, metric="val_acc")
    assert table.axes == ("model.widths", "privacy.max_grad_norm")
    rows = {tuple(v for _, v in r.axes): r for r in table.rows}
    assert set(rows) == {("4-8-8", "0.5"), ("4-8-8", "2"), ("8-8-16", "0.5"), ("8-8-16", "2")}
    row = rows[("8-8-16", "2")]
    assert row.widths == (8, 8, 16)
    assert row.cell("DP eps=8, no aug").mean == pytest.approx(0.082)
    assert row.cell("non-DP, no aug").mean == pytest.approx(0.08)  # the non-private reference
    assert "| dataset | group | model.widths | privacy.max_grad_norm | params |" in to_markdown(study, table)
    assert "model.widths,privacy.max_grad_norm" in to_csv(table).splitlines()[0]
    assert "embedded/e/model.widths=8-8-16/privacy.max_grad_norm=2/val_acc/DP eps=8, no aug" in to_summary(table)
    by_width = build_table(study, results, metric="val_acc", by=("model.widths",))
    assert [r.axes for r in by_width.rows] == [(("model.widths", "4-8-8"),), (("model.widths", "8-8-16"),)]
    assert by_width.rows[1].cell("DP eps=8, no aug").n == 2  # both clipping norms pooled
    with pytest.raises(ReproduceError, match="no grid axis training.epochs"):
        build_table(study, results, by=("training.epochs",))


def test_rows_of_another_layout_are_not_compared_with_the_paper(fake_study, results):
    study = parse_study(FAKE_STUDY_WIDTHS)
    root_results = {c.id: results[c.id.rsplit("-", 1)[0]] for c in study.cells()}
    t = build_table(study, root_results, metric="val_acc")
    papers = {
        dict(r.axes)["model.widths"]: r.cell("non-DP, no aug").paper
        for r in t.rows
        if (r.dataset, r.group) == ("bloodmnist", "e")
    }
    assert papers["8-16-32"] == pytest.approx(0.9405) and papers["4-8-8"] is None


# the report fixtures' study with a dotted model.widths axis
FAKE_STUDY_WIDTHS = FAKE_STUDY + "  model.widths: [[8, 16, 32], [4, 8, 8]]\n"
