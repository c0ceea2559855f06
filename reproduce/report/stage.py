"""The table stage's edge: read cell results from disk, write Markdown, CSV and the DVC metrics file."""

from __future__ import annotations

import json
from pathlib import Path

from reproduce.errors import ReproduceError
from reproduce.report.table import build_table, to_csv, to_markdown, to_summary
from reproduce.study import Study
from reproduce.train import write_json_atomic


def read_results(study: Study, results_dir: Path) -> dict[str, dict]:
    """Results of exactly the study's current cells (stale cells from older grids are ignored)."""
    out = {}
    for cell in study.cells():
        path = results_dir / "cells" / cell.id / "result.json"
        if path.exists():
            try:
                out[cell.id] = json.loads(path.read_text())
            except json.JSONDecodeError as e:
                raise ReproduceError(f"{path}: corrupt result ({e}); delete it and rerun `dvc repro`") from None
    return out


def write_tables(study: Study, *, results_dir: Path) -> list[Path]:
    table = build_table(study, read_results(study, results_dir))
    md, csv_path, summary = results_dir / "table.md", results_dir / "table.csv", results_dir / "summary.json"
    for path, text in ((md, to_markdown(study, table)), (csv_path, to_csv(table))):
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)
    write_json_atomic(summary, to_summary(table))
    return [md, csv_path, summary]
