"""The report stages' edge: read cell results from disk; write the tables (Markdown, CSV, LaTeX, the
DVC metrics file) into the results directory and the figures + self-contained HTML page into the
report directory. ``reproduce table`` / ``reproduce report`` (``reproduce.cli``) call it.

Every section is computed once (``sections.report_sections``); the writers here only render it.
"""

from __future__ import annotations

from pathlib import Path

from reproduce.atomic import write_json_atomic, write_text_atomic
from reproduce.attribution.files import read_scores
from reproduce.errors import ReproduceError
from reproduce.pipeline.stages import untrained_cells, untrained_message
from reproduce.records.result import read_results  # noqa: F401 (read_results: this module's API too)
from reproduce.report.attribution import draw_figure2
from reproduce.report.attribution import summary_entries as scores_summary
from reproduce.report.attribution import to_markdown as scores_markdown
from reproduce.report.audit import csv_rows, draw_audit
from reproduce.report.audit import summary_entries as audit_summary
from reproduce.report.audit import to_latex as audit_latex
from reproduce.report.audit import to_markdown as audit_markdown
from reproduce.report.sections import Report, report_sections
from reproduce.report.table import csv_axes, to_csv, to_latex, to_markdown, to_summary
from reproduce.report.trends import draw_over_compute, draw_over_epsilon
from reproduce.report.trends import summary_entries as compute_summary
from reproduce.report.trends import to_markdown as compute_markdown
from reproduce.study import Study


def require_trained(study: Study, results_dir: Path) -> None:
    """ReproduceError naming the untrained cells, if any: the tables need every cell (a mean over the
    seeds that happen to be there would pass for the study's)."""
    untrained = untrained_cells(study, results_dir)
    if untrained:
        raise ReproduceError(untrained_message(study, untrained, results_dir))


def read_report(study: Study, results_dir: Path) -> Report:
    """Every section of the report, from the cell results (and attribution scores) under ``results_dir``."""
    require_trained(study, results_dir)
    return report_sections(study, read_results(study, results_dir), read_scores(results_dir))


def write_tables(study: Study, *, results_dir: Path) -> list[Path]:
    """table.md, table.csv, table.tex and summary.json (flat, for `dvc metrics show`) in results_dir."""
    results_dir = Path(results_dir)
    return _write_table_files(read_report(study, results_dir), results_dir)


def _write_table_files(report: Report, results_dir: Path) -> list[Path]:
    study, tables = report.study, report.tables
    md, csv_path, tex, summary = (results_dir / n for n in ("table.md", "table.csv", "table.tex", "summary.json"))
    # The privacy audit (audited studies only), compute and the attribution scores follow Table 1
    # (sections of their own; the scores are absent until the attribute stage has run).
    sections = [
        s
        for s in (audit_markdown(study, report.audit), compute_markdown(report.compute), scores_markdown(report.scores))
        if s
    ]
    write_text_atomic(md, "\n".join([to_markdown(study, tables), *sections]))
    write_text_atomic(csv_path, to_csv(tables) + csv_rows(report.audit, csv_axes(tables)))
    write_text_atomic(tex, to_latex(study, tables) + audit_latex(study, report.audit))
    write_json_atomic(
        summary,
        {
            **to_summary(tables),
            **audit_summary(report.audit),
            **compute_summary(report.compute),
            **scores_summary(report.scores),
        },
    )
    return [md, csv_path, tex, summary]


def build_report(study: Study, *, results_dir: Path, out_dir: Path) -> list[Path]:
    """Tables into results_dir (as `write_tables`), figures (PNG) and index.html into out_dir.

    Reads only existing results (no training); returns every path written, index.html last.
    """
    from reproduce.report.diagnostics import write_diagnostics_figures
    from reproduce.report.figures import write_figures
    from reproduce.report.html import write_html

    results_dir, out_dir = Path(results_dir), Path(out_dir)
    report = read_report(study, results_dir)
    table_paths = _write_table_files(report, results_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = report.results
    figures = write_figures(study, results, out_dir) + write_diagnostics_figures(study, results, out_dir)
    for dataset in study.grid.dataset:
        for draw, stem in ((draw_over_epsilon, "accuracy-over-epsilon"), (draw_over_compute, "accuracy-over-compute")):
            fig = draw(study, list(report.compute), dataset, out_dir / f"{stem}-{dataset}.png")
            if fig is not None:
                figures.append(fig)
        drawn = draw_audit(study, list(report.audit), dataset, out_dir / f"audit-{dataset}.png")
        if drawn is not None:
            figures.append(drawn)
        panel = draw_figure2(study, results, results_dir, dataset, out_dir / f"figure2-{dataset}.png")
        if panel is not None:
            figures.append(panel)
    index = write_html(report, figures, out_dir / "index.html")
    return [*table_paths, *(f.path for f in figures), index]
