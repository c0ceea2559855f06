"""The report stages' edge: read cell results from disk; write the tables (Markdown, CSV, LaTeX, the
DVC metrics file) into the results directory and the figures + self-contained HTML page into the
report directory.
"""

from __future__ import annotations

from pathlib import Path

from reproduce.atomic import write_json_atomic, write_text_atomic
from reproduce.errors import ReproduceError
from reproduce.report.table import TABLE_METRICS, build_table, to_csv, to_latex, to_markdown, to_summary
from reproduce.study import Study
from reproduce.training.result import CellResult, read_result


def read_results(study: Study, results_dir: Path) -> dict[str, CellResult]:
    """Results of exactly the study's current cells (stale cells from older grids are ignored)."""
    out = {}
    for cell in study.cells():
        path = Path(results_dir) / "cells" / cell.id / "result.json"
        if path.exists():
            out[cell.id] = read_result(path)
    return out


def build_tables(study: Study, results: dict[str, CellResult]) -> list[dict]:
    """Table 1 for each of TABLE_METRICS (validation accuracy - the paper's metric - then test)."""
    return [build_table(study, results, metric=m) for m in TABLE_METRICS]


def write_tables(study: Study, *, results_dir: Path) -> list[Path]:
    """table.md, table.csv, table.tex and summary.json (flat, for `dvc metrics show`) in results_dir."""
    results_dir = Path(results_dir)
    return _write_table_files(study, build_tables(study, read_results(study, results_dir)), results_dir)


def _write_table_files(study: Study, tables: list[dict], results_dir: Path) -> list[Path]:
    md, csv_path, tex, summary = (results_dir / n for n in ("table.md", "table.csv", "table.tex", "summary.json"))
    write_text_atomic(md, to_markdown(study, tables))
    write_text_atomic(csv_path, to_csv(tables))
    write_text_atomic(tex, to_latex(study, tables))
    write_json_atomic(summary, to_summary(tables))
    return [md, csv_path, tex, summary]


def build_report(study: Study, *, results_dir: Path, out_dir: Path) -> list[Path]:
    """Tables into results_dir (as `write_tables`), figures (PNG) and index.html into out_dir.

    Reads only existing results (no training); returns every path written, index.html last.
    """
    from reproduce.report.diagnostics import write_diagnostics_figures
    from reproduce.report.figures import write_figures
    from reproduce.report.html import write_html
    results_dir, out_dir = Path(results_dir), Path(out_dir)
    results = read_results(study, results_dir)
    tables = build_tables(study, results)
    table_paths = _write_table_files(study, tables, results_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = write_figures(study, results, out_dir) + write_diagnostics_figures(study, results, out_dir)
    index = write_html(study, results, tables, figures, out_dir / "index.html")
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
