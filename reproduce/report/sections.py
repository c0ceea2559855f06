"""Every section of a study's report, computed once from its cell results (pure).

``report_sections`` aggregates; the renderers (``table`` for table.md/.csv/.tex and summary.json,
``html`` for index.html) only format what it returns, so a number on the page is the number in the
tables. ``stage`` reads the inputs and writes the outputs.
"""

from __future__ import annotations

import dataclasses

from reproduce.records.result import CellResult
from reproduce.report.attribution import ScoreRow, score_rows
from reproduce.report.audit import AuditRow, audit_rows
from reproduce.report.diagnostics import DiagnosticsSummary, diagnostics_section
from reproduce.report.table import TABLE_METRICS, Table, build_table
from reproduce.report.trends import TrendRow, compute_rows
from reproduce.study import Study


@dataclasses.dataclass(frozen=True)
class Report:
    """A study's report: Table 1 per metric and the rows of every other section."""

    study: Study
    results: dict[str, CellResult]  # per cell: its privacy statement and provenance, as the page lists them
    tables: tuple[Table, ...]  # one per TABLE_METRICS entry
    audit: tuple[AuditRow, ...]  # empty for a study without an audit section
    compute: tuple[TrendRow, ...]
    scores: tuple[ScoreRow, ...]  # empty until the attribute stage has run
    diagnostics: DiagnosticsSummary | None  # None when no result recorded step diagnostics


def build_tables(study: Study, results: dict[str, CellResult]) -> tuple[Table, ...]:
    """Table 1 for each of TABLE_METRICS (validation accuracy - the paper's metric - then test)."""
    return tuple(build_table(study, results, metric=m) for m in TABLE_METRICS)


def report_sections(study: Study, results: dict[str, CellResult], scores: dict[str, dict]) -> Report:
    """Every section of the report of ``study``.

    Args:
        study: the study.
        results: cell id -> result; every cell needs one (Table 1 refuses missing cells).
        scores: cell id -> its attribution scores (``attribution.files.read_scores``; {} before that stage).
    """
    return Report(
        study=study,
        results=results,
        tables=build_tables(study, results),
        audit=tuple(audit_rows(study, results)),
        compute=tuple(compute_rows(study, results)),
        scores=tuple(score_rows(study, scores)),
        diagnostics=diagnostics_section(study, results),
    )
