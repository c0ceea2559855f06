"""The report stages' edge: read cell results from disk; write the tables (Markdown, CSV, LaTeX, the
DVC metrics file) into the results directory and the figures + self-contained HTML page into the
report directory.
"""

from __future__ import annotations

from pathlib import Path

from reproduce.atomic import write_json_atomic, write_text_atomic
from reproduce.errors import ReproduceError
from reproduce.attribution.files import read_scores
from reproduce.report.attribution import ScoreRow, draw_figure2, score_rows, summary_entries
from reproduce.report.attribution import to_markdown as scores_markdown
from reproduce.report.audit import AuditRow, audit_rows, csv_rows, draw_audit
from reproduce.report.audit import summary_entries as audit_summary
from reproduce.report.audit import to_latex as audit_latex
from reproduce.report.audit import to_markdown as audit_markdown
from reproduce.report.trends import TrendRow, compute_rows, draw_over_compute, draw_over_epsilon
from reproduce.report.trends import summary_entries as compute_summary
from reproduce.report.trends import to_markdown as compute_markdown
from reproduce.report.table import TABLE_METRICS, build_table, to_csv, to_latex, to_markdown, to_summary
from reproduce.study import Study
from reproduce.pipeline.stages import untrained_cells, untrained_message
from reproduce.records.result import CellResult, read_results  # noqa: F401 (read_results: this module's API too)


def require_trained(study: Study, results_dir: Path) -> None:
    """ReproduceError naming the untrained cells, if any: the tables need every cell (a mean over the
    seeds that happen to be there would pass for the study's)."""
    untrained = untrained_cells(study, results_dir)
    if untrained:
        raise ReproduceError(untrained_message(study, untrained, results_dir))


def build_tables(study: Study, results: dict[str, CellResult]) -> list[dict]:
    """Table 1 for each of TABLE_METRICS (validation accuracy - the paper's metric - then test)."""
    return [build_table(study, results, metric=m) for m in TABLE_METRICS]


def write_tables(study: Study, *, results_dir: Path) -> list[Path]:
    """table.md, table.csv, table.tex and summary.json (flat, for `dvc metrics show`) in results_dir."""
    results_dir = Path(results_dir)
    require_trained(study, results_dir)
    results = read_results(study, results_dir)
    return _write_table_files(study, build_tables(study, results), results_dir,
                              score_rows(study, read_scores(results_dir)), compute_rows(study, results),
                              audit_rows(study, results))


def _write_table_files(study: Study, tables: list[dict], results_dir: Path, scores: list[ScoreRow],
                       compute: list[TrendRow], audit: list[AuditRow]) -> list[Path]:
    md, csv_path, tex, summary = (results_dir / n for n in ("table.md", "table.csv", "table.tex", "summary.json"))
    # The privacy audit (audited studies only), compute and the attribution scores follow Table 1
    # (sections of their own; the scores are absent until the attribute stage has run).
    sections = [s for s in (audit_markdown(study, audit), compute_markdown(compute), scores_markdown(scores)) if s]
    write_text_atomic(md, "\n".join([to_markdown(study, tables), *sections]))
    write_text_atomic(csv_path, to_csv(tables) + csv_rows(audit, tables[0].get("axes", []) if tables else []))
    write_text_atomic(tex, to_latex(study, tables) + audit_latex(study, audit))
    write_json_atomic(summary, {**to_summary(tables), **audit_summary(audit), **compute_summary(compute),
                                **summary_entries(scores)})
    return [md, csv_path, tex, summary]


def build_report(study: Study, *, results_dir: Path, out_dir: Path) -> list[Path]:
    """Tables into results_dir (as `write_tables`), figures (PNG) and index.html into out_dir.

    Reads only existing results (no training); returns every path written, index.html last.
    """
    from reproduce.report.diagnostics import write_diagnostics_figures
    from reproduce.report.figures import write_figures
    from reproduce.report.html import write_html
    results_dir, out_dir = Path(results_dir), Path(out_dir)
    require_trained(study, results_dir)
    results = read_results(study, results_dir)
    tables = build_tables(study, results)
    scores = score_rows(study, read_scores(results_dir))
    compute = compute_rows(study, results)
    audit = audit_rows(study, results)
    table_paths = _write_table_files(study, tables, results_dir, scores, compute, audit)
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = write_figures(study, results, out_dir) + write_diagnostics_figures(study, results, out_dir)
    for dataset in study.grid.dataset:
        for draw, stem in ((draw_over_epsilon, "accuracy-over-epsilon"), (draw_over_compute, "accuracy-over-compute")):
            fig = draw(study, compute, dataset, out_dir / f"{stem}-{dataset}.png")
            if fig is not None:
                figures.append(fig)
        drawn = draw_audit(study, audit, dataset, out_dir / f"audit-{dataset}.png")
        if drawn is not None:
            figures.append(drawn)
        panel = draw_figure2(study, results, results_dir, dataset, out_dir / f"figure2-{dataset}.png")
        if panel is not None:
            figures.append(panel)
    index = write_html(study, results, tables, figures, out_dir / "index.html", scores=scores, audit=audit)
    return [*table_paths, *(f.path for f in figures), index]


def main(argv: list[str] | None = None) -> int:
    """``python -m reproduce.report STUDY [--results DIR] [--out DIR]``: tables, figures, index.html."""
    import argparse
    import sys
    from reproduce.errors import StudyError
    from reproduce.study import load_study
    p = argparse.ArgumentParser(prog="python -m reproduce.report", description=build_report.__doc__.splitlines()[0])
    p.add_argument("study")
    p.add_argument("--results", help="default: results/<study>")
    p.add_argument("--out", help="default: reports/<study>")
    args = p.parse_args(argv)
    try:
        study = load_study(args.study)
        paths = build_report(study, results_dir=Path(args.results or f"results/{study.name}"),
                             out_dir=Path(args.out or f"reports/{study.name}"))
    except (StudyError, ReproduceError) as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    for path in paths:
        print(path)
    return 0
