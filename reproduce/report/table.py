"""Table 1 of a study: rows dataset x group, columns non-DP / DP (per epsilon) x augmentation.

Pure functions build the table from cell results; ``write_tables`` is the DVC stage's edge.
"""

from __future__ import annotations

import csv
import io
import statistics
from pathlib import Path

from reproduce.errors import ReproduceError
from reproduce.study import NON_PRIVATE, Study

METRIC = "test_acc"


def column_label(epsilon, multiplicity: int) -> str:
    priv = "non-DP" if epsilon == NON_PRIVATE else f"DP eps={epsilon:g}"
    aug = "no aug" if multiplicity == 1 else f"aug x{multiplicity}"
    return f"{priv}, {aug}"


def summarise(values: list[float]) -> dict:
    """Mean and sample std over seeds (std 0 for one seed)."""
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values)}


def build_table(study: Study, results: dict[str, dict], *, metric: str = METRIC) -> dict:
    """Aggregate over seeds. ``results`` maps cell id -> result record (from result.json).

    Returns {"columns": [...], "rows": [{"dataset", "group", "parameters", cells: {col: summary}}],
    "gaps": per row DP gap per epsilon (non-DP mean - DP mean, same augmentation)}.
    """
    missing = [c.id for c in study.cells() if c.id not in results]
    if missing:
        raise ReproduceError(f"study {study.name}: no result for cell(s) {', '.join(missing)}; run `dvc repro` first")
    g = study.grid
    columns = [(e, k) for e in g.epsilon for k in g.multiplicity]
    rows = []
    for dataset in g.dataset:
        for group in g.group:
            row = {"dataset": dataset, "group": group, "cells": {}, "gaps": {}}
            for eps, k in columns:
                cells = [c for c in study.cells() if (c.dataset, c.group, c.epsilon, c.multiplicity) == (dataset, group, eps, k)]
                vals = [float(results[c.id]["metrics"][metric]) for c in cells]
                row["cells"][column_label(eps, k)] = summarise(vals)
                row["parameters"] = results[cells[0].id]["metrics"].get("parameters")
            for eps, k in columns:
                if eps != NON_PRIVATE and NON_PRIVATE in g.epsilon:
                    nondp = row["cells"][column_label(NON_PRIVATE, k)]["mean"]
                    row["gaps"][f"DP gap eps={eps:g}, {'no aug' if k == 1 else f'aug x{k}'}"] = nondp - row["cells"][column_label(eps, k)]["mean"]
            rows.append(row)
    return {"metric": metric, "columns": [column_label(e, k) for e, k in columns], "rows": rows}


def _fmt(s: dict) -> str:
    return f"{100 * s['mean']:.2f} ± {100 * s['std']:.2f}"


def to_markdown(study: Study, table: dict) -> str:
    gap_cols = list(table["rows"][0]["gaps"]) if table["rows"] else []
    head = ["dataset", "group", "params", *table["columns"], *gap_cols]
    lines = [f"# {study.name}: {table['metric']} (%), mean ± std over seeds {study.grid.seed}", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in table["rows"]:
        cells = [_fmt(r["cells"][c]) for c in table["columns"]]
        gaps = [f"{100 * r['gaps'][c]:.2f}" for c in gap_cols]
        lines.append("| " + " | ".join([r["dataset"], r["group"], f"{r['parameters']:,}", *cells, *gaps]) + " |")
    lines += ["", "DP gap = non-DP mean minus DP mean (percentage points). Privacy statements and provenance per "
              f"cell: results/{study.name}/cells/<cell>/result.json."]
    return "\n".join(lines) + "\n"


def to_csv(table: dict) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["dataset", "group", "parameters", "column", "metric", "mean", "std", "n_seeds"])
    for r in table["rows"]:
        for c in table["columns"]:
            s = r["cells"][c]
            w.writerow([r["dataset"], r["group"], r["parameters"], c, table["metric"], f"{s['mean']:.6f}", f"{s['std']:.6f}", s["n"]])
    return buf.getvalue()


def to_summary(table: dict) -> dict:
    """Flat numbers for `dvc metrics show`."""
    out = {}
    for r in table["rows"]:
        key = f"{r['dataset']}/{r['group']}"
        out[key] = {c: round(r["cells"][c]["mean"], 6) for c in table["columns"]}
        out[key].update({g: round(v, 6) for g, v in r["gaps"].items()})
    return out
