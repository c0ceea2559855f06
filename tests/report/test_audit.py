"""The privacy audit in the report: the bound beside the accountant's epsilon, violations loud, a figure;
nothing of it for a study without an audit section."""

from __future__ import annotations

import csv
import io
import json

import pytest

from reproduce.report.audit import VIOLATION, audit_rows, csv_rows, summary_entries, to_latex, to_markdown
from reproduce.report.stage import build_report, read_results, write_tables
from reproduce.study import parse_study
from tests.report.conftest import AUDIT_STUDY, write_audited_results

BROKEN = "embedded-C4-2-1-1-gradient-audit"  # bound 2.5 > accountant epsilon 1.98


@pytest.fixture
def audit_study():
    return parse_study(AUDIT_STUDY)


def _results(study, tmp_path, bounds=None):
    return read_results(study, write_audited_results(tmp_path / "results", study, bounds=bounds))


def _row(rows, group, epsilon, kind):
    return next(
        r
        for r in rows
        if (r.group, r.epsilon, dict(r.axes).get("audit.kind", kind)) == (group, epsilon, kind)
        and r.verdicts[0].record.kind == kind
    )


def test_rows_pool_seeds_and_judge_each_cell_against_its_own_epsilon(audit_study, tmp_path):
    rows = audit_rows(audit_study, _results(audit_study, tmp_path, {BROKEN: 2.5}))
    assert len(rows) == 8 and all(r.n == 2 for r in rows)
    dp = _row(rows, "e", 2, "input")  # bounds 0.3, 0.4 (conftest: 0.3 + 0.1 x seed)
    assert dp.bound.mean == pytest.approx(0.35) and dp.accountant.mean == pytest.approx(1.98)
    assert dp.violations == () and dp.bound_max == pytest.approx(2.6)
    control = _row(rows, "e", "non-private", "gradient")  # no claim: a large bound is no violation
    assert control.accountant.mean is None and control.bound.mean == pytest.approx(2.25)
    assert control.violations == ()
    # One bad seed is a violation although the mean over seeds (1.4) is below the accountant's 1.98.
    broken = _row(rows, "C4", 2, "gradient")
    assert broken.bound.mean < 1.98 and broken.violations == (BROKEN,)
    assert sum(len(r.violations) for r in rows) == 1


def test_markdown_csv_latex_and_summary_show_the_bound_beside_epsilon_and_the_violation(audit_study, tmp_path):
    results = _results(audit_study, tmp_path, {BROKEN: 2.5})
    rows = audit_rows(audit_study, results)
    md = to_markdown(audit_study, rows)
    assert "| accountant ε | audit ε lower bound |" in md
    assert f"**{VIOLATION}**" in md and f"{BROKEN} (bound 2.500 > epsilon 1.980)" in md
    line = next(
        ln for ln in md.splitlines() if ln.startswith("| embedded | C4 | DP eps=2, no aug, audit.kind=gradient")
    )
    assert "1.980 ± 0.000" in line and "1.400 ± 1.556" in line and f"**{VIOLATION} ({BROKEN})**" in line
    assert "no claim (non-private control)" in md
    written = write_tables(audit_study, results_dir=tmp_path / "results")
    table_md, table_csv, table_tex, summary = (p.read_text() for p in written)
    assert md in table_md
    records = list(csv.DictReader(io.StringIO(table_csv)))
    audit = [r for r in records if r["kind"] == "audit"]
    assert {r["metric"] for r in audit} == {"epsilon", "audit_epsilon_lower", "audit_violations"}
    bad = [r for r in audit if r["metric"] == "audit_violations" and float(r["mean"]) > 0]
    assert [(r["group"], r["column"], r["audit.kind"]) for r in bad] == [("C4", "DP eps=2, no aug", "gradient")]
    assert csv_rows(rows, ["audit.kind"]) in table_csv
    assert rf"\textbf{{{VIOLATION}}}" in table_tex and to_latex(audit_study, rows) in table_tex
    flat = json.loads(summary)
    key = "embedded/C4/audit.kind=gradient/{}/DP eps=2, no aug"
    assert flat[key.format("audit_violations")] == 1 and flat[key.format("audit_epsilon_lower")] == pytest.approx(1.4)
    assert flat[key.format("epsilon")] == pytest.approx(1.98)
    assert summary_entries(rows).items() <= flat.items()


def test_no_violation_no_alarm(audit_study, tmp_path):
    md = to_markdown(audit_study, audit_rows(audit_study, _results(audit_study, tmp_path)))
    assert f"**{VIOLATION}" not in md and f"{VIOLATION} (" not in md and "consistent" in md


def test_studies_without_an_audit_section_get_no_audit_output(fake_study, write_fake_results):
    results_dir = write_fake_results(fake_study)
    assert audit_rows(fake_study, read_results(fake_study, results_dir)) == []
    table_md, table_csv, table_tex, summary = (p.read_text() for p in write_tables(fake_study, results_dir=results_dir))
    assert "audit" not in table_md.lower() and ",audit," not in table_csv and "audit" not in table_tex
    assert not [k for k in json.loads(summary) if "audit" in k]


def test_report_draws_the_audit_figure_deterministically_and_the_page_shows_it(audit_study, tmp_path):
    results_dir = write_audited_results(tmp_path / "results", audit_study, bounds={BROKEN: 2.5})
    paths = build_report(audit_study, results_dir=results_dir, out_dir=tmp_path / "a")
    figure = tmp_path / "a" / "audit-embedded.png"
    assert figure in paths and figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    build_report(audit_study, results_dir=results_dir, out_dir=tmp_path / "b")
    assert (tmp_path / "b" / "audit-embedded.png").read_bytes() == figure.read_bytes()  # byte-reproducible
    page = (tmp_path / "a" / "index.html").read_text()
    assert '<table id="audit" data-check="1">' in page and 'alt="Privacy audit — embedded"' in page
    assert "a point above it is a VIOLATION" in page and f"{VIOLATION} ({BROKEN})" in page


def test_report_of_a_study_without_audit_has_no_audit_figure_or_section(fake_report):
    _, _, paths = fake_report
    assert not [p for p in paths if p.name.startswith("audit-")]
    page = next(p for p in paths if p.name == "index.html").read_text()
    assert 'id="audit"' not in page and "Privacy audit" not in page
