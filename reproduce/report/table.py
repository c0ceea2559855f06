"""Table 1 of a study in the paper's layout: rows dataset x group (x the values of the study's dotted
grid axes, e.g. one row per model.widths layout; ``by`` picks which), columns non-DP / DP (one block per
DP epsilon) x augmentation (one column per multiplicity), mean ± sample std over seeds, the best
group per dataset and column in bold (as in the paper), DP-gap columns (non-DP minus DP, same
augmentation), and - for studies with published numbers - the paper's value and our delta per cell.

Pure functions: ``build_table`` aggregates cell results (``CellResult``) into a plain dict;
``to_markdown`` / ``to_csv`` / ``to_latex`` / ``to_summary`` render it. ``stage.write_tables`` is the
file edge.
"""

from __future__ import annotations

import csv
import io
import itertools
import math
import statistics

from reproduce.errors import ReproduceError
from reproduce.report.paper_values import PublishedTable, published_for
from reproduce.study import NON_PRIVATE, Study, dp_only
from reproduce.records.result import CellResult

METRIC = "test_acc"
# table.md / table.tex / table.csv hold these, in this order: validation accuracy first because the
# paper's Table 1 reports validation accuracy, then test accuracy (our held-out number).
TABLE_METRICS = ("val_acc", "test_acc")
METRIC_NAMES = {"val_acc": "validation accuracy", "test_acc": "test accuracy", "val_auc": "validation AUC",
                "test_auc": "test AUC"}
AUTO = "auto"


def aug_label(multiplicity: int) -> str:
    return "no aug" if multiplicity == 1 else f"aug x{multiplicity}"


def column_label(epsilon, multiplicity: int) -> str:
    priv = "non-DP" if epsilon == NON_PRIVATE else f"DP eps={epsilon:g}"
    return f"{priv}, {aug_label(multiplicity)}"


def gap_label(epsilon, multiplicity: int) -> str:
    return f"DP gap eps={epsilon:g}, {aug_label(multiplicity)}"


def axis_value_label(value) -> str:
    """An axis value as the table shows it: a layout [8, 16, 32] as "8-16-32" (the papers' notation)."""
    if isinstance(value, (list, tuple)):
        return "-".join(map(str, value))
    return str(value)


def _row_key(cell, by: tuple[str, ...]) -> tuple:
    # A non-private cell has no value of a DP-only axis: it is the reference of every such row.
    return tuple(None if not cell.private and dp_only(p) else axis_value_label(cell.axis(p)) for p in by)


def summarise(values: list[float]) -> dict:
    """Mean and sample std (n - 1) over seeds (std 0 for one seed); NaN/None values are dropped."""
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not vals:
        return {"mean": None, "std": None, "n": 0, "values": []}
    return {"mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
            "n": len(vals), "values": vals}


def _shown(x: float | None) -> float | None:
    """The value as displayed (percent, two decimals): bold ties are decided on what the reader sees."""
    return None if x is None else round(100 * x, 2)


def build_table(study: Study, results: dict[str, CellResult], *, metric: str = METRIC,
                paper: PublishedTable | None | str = AUTO, by: tuple[str, ...] | None = None) -> dict:
    """Aggregate over seeds. ``results`` maps cell id -> its result (from result.json).

    ``by``: the dotted grid axes that split rows (default: all of the study's, in YAML order); cells
    of axes left out are pooled with the seeds. Each row then has "axes": {path: shown value} (a
    DP-only axis's non-DP column is the non-private reference); "axes" lists them.

    ``paper``: a published table to compare with, None for none, or "auto" (the matching one from
    ``published/``, if any). Values are compared only when ``metric`` is the paper's metric.
    Returns {"metric", "columns": [label], "column_info": [{label, epsilon, multiplicity, private}],
    "gap_columns": [label], "rows": [{"dataset", "group", "widths", "parameters",
    "cells": {label: {mean, std, n, values, best, paper, delta}}, "gaps": {label: value}}],
    "paper": {key, citation, url, metric, caveats} | None}; fractions, not percent.
    """
    cells_all = study.cells()
    missing = [c.id for c in cells_all if c.id not in results]
    if missing:
        raise ReproduceError(f"study {study.name}: no result for cell(s) {', '.join(missing)}; run `dvc repro` first")
    if paper == AUTO:
        paper = published_for(study)
    compare = paper if paper is not None and paper.metric == metric else None
    g = study.grid
    by = tuple(g.axes) if by is None else tuple(by)
    unknown = [p for p in by if p not in g.axes]
    if unknown:
        raise ReproduceError(f"study {study.name}: no grid axis {', '.join(unknown)} to group by (axes: {', '.join(g.axes) or 'none'})")
    # The paper's order: non-DP first, then each DP epsilon; multiplicities within each.
    epsilons = [e for e in g.epsilon if e == NON_PRIVATE] + [e for e in g.epsilon if e != NON_PRIVATE]
    columns = [(e, k) for e in epsilons for k in g.multiplicity]
    by_key: dict[tuple, list] = {}
    for c in cells_all:
        by_key.setdefault((c.dataset, c.group, c.epsilon, c.multiplicity, *_row_key(c, by)), []).append(c)
    combos = list(itertools.product(*([axis_value_label(v) for v in g.axes[p]] for p in by)))
    rows = []
    for dataset in g.dataset:
        for group, combo in itertools.product(g.group, combos):
            first = next(c for c in cells_all if (c.dataset, c.group, *_row_key(c, by)) == (dataset, group, *combo))
            row = {"dataset": dataset, "group": group, **({"axes": dict(zip(by, combo))} if by else {}),
                   "widths": list(first.widths), "parameters": None, "cells": {}, "gaps": {}}
            for eps, k in columns:
                shown = tuple(None if eps == NON_PRIVATE and dp_only(p) else v for p, v in zip(by, combo))
                cells = by_key[(dataset, group, eps, k, *shown)]
                records = [results[c.id] for c in cells]
                s = summarise([r.metric(metric) for r in records])
                # The paper's numbers are for its one layout: rows of a width axis with another have none.
                other_layout = (compare is not None and compare.widths is not None and "model.widths" in by
                                and tuple(row["widths"]) != tuple(compare.widths))
                if compare is not None and not other_layout:
                    p = compare.lookup(dataset, group, eps, k, delta=study.privacy.delta)
                    s["paper"] = None if p is None else p / compare.scale
                    s["delta"] = None if p is None or s["mean"] is None else s["mean"] - p / compare.scale
                else:
                    s["paper"] = s["delta"] = None
                row["cells"][column_label(eps, k)] = s
                if row["parameters"] is None:
                    row["parameters"] = next((r.metrics["parameters"] for r in records
                                              if r.metrics.get("parameters") is not None), None)
            if NON_PRIVATE in g.epsilon:
                for eps, k in columns:
                    if eps != NON_PRIVATE:
                        a = row["cells"][column_label(NON_PRIVATE, k)]["mean"]
                        b = row["cells"][column_label(eps, k)]["mean"]
                        row["gaps"][gap_label(eps, k)] = None if a is None or b is None else a - b
            rows.append(row)
    labels = [column_label(e, k) for e, k in columns]
    for dataset in g.dataset:                      # bold: best group per dataset and column
        block = [r for r in rows if r["dataset"] == dataset]
        for label in labels:
            shown = [_shown(r["cells"][label]["mean"]) for r in block]
            top = max((v for v in shown if v is not None), default=None)
            for r, v in zip(block, shown):
                r["cells"][label]["best"] = top is not None and v == top
    return {
        "metric": metric, "columns": labels,
        "column_info": [{"label": column_label(e, k), "epsilon": e, "multiplicity": k, "private": e != NON_PRIVATE}
                        for e, k in columns],
        "gap_columns": list(rows[0]["gaps"]) if rows else [],
        "rows": rows, "seeds": list(g.seed), **({"axes": list(by)} if by else {}),
        "paper": None if compare is None else {"key": compare.key, "citation": compare.citation, "url": compare.url,
                                               "metric": compare.metric, "caveats": compare.caveats(study)},
    }


# ---------------------------------------------------------------- text renderings

def fmt_value(x: float | None, *, signed: bool = False) -> str:
    if x is None:
        return "n/a"
    return f"{100 * x:+.2f}" if signed else f"{100 * x:.2f}"


def fmt_mean_std(s: dict, *, pm: str = "±") -> str:
    if s["mean"] is None:
        return "n/a"
    if s["n"] > 1:
        return f"{fmt_value(s['mean'])} {pm} {fmt_value(s['std'])}"
    return fmt_value(s["mean"])


def metric_title(metric: str) -> str:
    return METRIC_NAMES.get(metric, metric)


def caption(study: Study, table: dict) -> str:
    m = table["metric"]
    text = (f"{metric_title(m).capitalize()} ({m}, %), mean ± sample std over seeds "
            f"{', '.join(map(str, table['seeds']))}; bold: best group per dataset and column.")
    if m == "val_acc":
        text += " The paper's Table 1 reports validation accuracy, so this is the table to compare with it."
    if table["paper"]:
        text += (f" Each cell: ours (paper, Δ = ours − paper, percentage points); paper: {table['paper']['citation']}")
    return text


def _md_cell(s: dict) -> str:
    text = fmt_mean_std(s)
    if s.get("best") and s["mean"] is not None:
        text = f"**{text}**"
    if s.get("paper") is not None:
        text += f" (paper {fmt_value(s['paper'])}, Δ {fmt_value(s['delta'], signed=True)})"
    return text


def _md_table(study: Study, table: dict, *, level: str = "##") -> list[str]:
    gap_cols = table["gap_columns"]
    axes = table.get("axes", [])
    head = ["dataset", "group", *axes, "params", *table["columns"], *gap_cols]
    lines = [f"{level} {metric_title(table['metric']).capitalize()} (%)", "", caption(study, table), ""]
    for c in (table["paper"] or {}).get("caveats", []):
        lines.append(f"- Caveat: {c}.")
    if table["paper"] and table["paper"]["caveats"]:
        lines.append("")
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in table["rows"]:
        params = f"{r['parameters']:,}" if r["parameters"] is not None else "n/a"
        cells = [_md_cell(r["cells"][c]) for c in table["columns"]]
        gaps = [fmt_value(r["gaps"][c]) for c in gap_cols]
        shown = [r["axes"][a] for a in axes]
        lines.append("| " + " | ".join([r["dataset"], r["group"], *shown, params, *cells, *gaps]) + " |")
    return lines


def to_markdown(study: Study, tables: dict | list[dict]) -> str:
    tables = [tables] if isinstance(tables, dict) else list(tables)
    lines = [f"# {study.name}: Table 1", ""]
    for t in tables:
        lines += _md_table(study, t) + [""]
    lines += ["DP gap = non-DP mean minus DP mean, same augmentation (percentage points). Privacy statements and "
              f"provenance per cell: results/{study.name}/cells/<cell>/result.json; the report "
              f"reports/{study.name}/index.html has them all."]
    return "\n".join(lines) + "\n"


CSV_HEADER = ["dataset", "group", "parameters", "column", "metric", "mean", "std", "n_seeds",
              "kind", "epsilon", "multiplicity", "widths", "best", "paper", "delta_vs_paper"]


def _num(x: float | None) -> str:
    return "" if x is None else f"{x:.6f}"


def to_csv(tables: dict | list[dict]) -> str:
    """Long format, fractions (not percent). kind = "cell" (mean/std over seeds) or "gap" (DP gap)."""
    tables = [tables] if isinstance(tables, dict) else list(tables)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    # The dotted axes rows are split by (the same for every metric's table) come last, by path.
    axes = tables[0].get("axes", []) if tables else []
    w.writerow(CSV_HEADER + axes)
    for t in tables:
        info = {c["label"]: c for c in t["column_info"]}
        for r in t["rows"]:
            widths = "-".join(map(str, r["widths"]))
            shown = [r["axes"][a] for a in axes]
            for c in t["columns"]:
                s = r["cells"][c]
                w.writerow([r["dataset"], r["group"], r["parameters"], c, t["metric"], _num(s["mean"]), _num(s["std"]),
                            s["n"], "cell", info[c]["epsilon"], info[c]["multiplicity"], widths, int(bool(s.get("best"))),
                            _num(s.get("paper")), _num(s.get("delta")), *shown])
            for c, v in r["gaps"].items():
                w.writerow([r["dataset"], r["group"], r["parameters"], c, t["metric"], _num(v), "", "", "gap",
                            "", "", widths, "", "", "", *shown])
    return buf.getvalue()


def to_summary(tables: dict | list[dict]) -> dict:
    """Flat numbers for `dvc metrics show`: "<dataset>/<group>/<metric>/<column>" -> fraction (with the
    row's dotted axes after the group: "<dataset>/<group>/model.widths=8-16-32/<metric>/<column>")."""
    tables = [tables] if isinstance(tables, dict) else list(tables)
    out = {}
    for t in tables:
        for r in t["rows"]:
            axes = "".join(f"/{a}={v}" for a, v in r.get("axes", {}).items())
            base = f"{r['dataset']}/{r['group']}{axes}/{t['metric']}"
            for c in t["columns"]:
                s = r["cells"][c]
                if s["mean"] is not None:
                    out[f"{base}/{c}"] = round(s["mean"], 6)
                if s.get("delta") is not None:
                    out[f"{base}/{c}/delta_vs_paper"] = round(s["delta"], 6)
            for c, v in r["gaps"].items():
                if v is not None:
                    out[f"{base}/{c}"] = round(v, 6)
    return out


# ---------------------------------------------------------------- LaTeX

_TEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def tex_escape(text: str) -> str:
    return "".join(_TEX_ESCAPES.get(ch, ch) for ch in str(text))


def _tex_cell(s: dict, *, with_paper: bool) -> str:
    if s["mean"] is None:
        return "n/a"
    mean = fmt_value(s["mean"])
    mean = rf"\mathbf{{{mean}}}" if s.get("best") else mean
    text = f"${mean} \\pm {fmt_value(s['std'])}$" if s["n"] > 1 else f"${mean}$"
    if with_paper:
        text += (r" {\scriptsize(" + fmt_value(s["paper"]) + r"; $" + fmt_value(s["delta"], signed=True) + r"$)}"
                 if s.get("paper") is not None else r" {\scriptsize(--)}")
    return text


def _tex_aug(k: int) -> str:
    return "no aug" if k == 1 else rf"aug $\times{k}$"


def _tex_eps(e) -> str:
    return "non-DP" if e == NON_PRIVATE else rf"DP $\varepsilon={e:g}$"


def to_latex(study: Study, tables: dict | list[dict]) -> str:
    """One booktabs ``table`` per metric (needs \\usepackage{booktabs})."""
    tables = [tables] if isinstance(tables, dict) else list(tables)
    out = [f"% {study.name}: Table 1, generated by reproduce.report (requires \\usepackage{{booktabs}})."]
    for t in tables:
        info = t["column_info"]
        gaps = t["gap_columns"]
        with_paper = t["paper"] is not None
        # header row 1: one block per epsilon (its multiplicities), then one block per DP gap epsilon
        blocks: list[tuple[str, int]] = []
        for c in info:
            name = _tex_eps(c["epsilon"])
            if blocks and blocks[-1][0] == name:
                blocks[-1] = (name, blocks[-1][1] + 1)
            else:
                blocks.append((name, 1))
        gap_blocks: list[tuple[str, int]] = []
        for c in info:
            if c["private"] and gaps:
                name = rf"gap $\varepsilon={c['epsilon']:g}$"
                if gap_blocks and gap_blocks[-1][0] == name:
                    gap_blocks[-1] = (name, gap_blocks[-1][1] + 1)
                else:
                    gap_blocks.append((name, 1))
        axes = t.get("axes", [])
        top, rules, start = [" "] * (3 + len(axes)), [], 4 + len(axes)
        for name, n in blocks + gap_blocks:
            top.append(rf"\multicolumn{{{n}}}{{c}}{{{name}}}")
            rules.append(rf"\cmidrule(lr){{{start}-{start + n - 1}}}")
            start += n
        second = ["Dataset", "Group", *[tex_escape(a) for a in axes], "Params", *[_tex_aug(c["multiplicity"]) for c in info],
                  *[_tex_aug(c["multiplicity"]) for c in info if c["private"] and gaps]]
        cap = tex_escape(caption(study, t)).replace("±", r"$\pm$").replace("Δ", r"$\Delta$").replace("−", "-")
        out += ["", r"\begin{table}[t]", r"\centering", r"\small",
                rf"\caption{{{cap}}}",
                rf"\label{{tab:{study.name}-{t['metric'].replace('_', '-')}}}",
                r"\begin{tabular}{ll" + "l" * len(axes) + "r" * (1 + len(info) + len(gaps)) + "}", r"\toprule",
                " & ".join(top) + r" \\", " ".join(rules), " & ".join(second) + r" \\", r"\midrule"]
        previous = None
        for r in t["rows"]:
            if previous is not None and r["dataset"] != previous:
                out.append(r"\midrule")
            name = tex_escape(r["dataset"]) if r["dataset"] != previous else ""
            previous = r["dataset"]
            params = f"{r['parameters']:,}".replace(",", "{,}") if r["parameters"] is not None else "n/a"
            cells = [_tex_cell(r["cells"][c], with_paper=with_paper) for c in t["columns"]]
            gap_cells = [f"${fmt_value(r['gaps'][c], signed=True)}$" if r["gaps"][c] is not None else "n/a" for c in gaps]
            shown = [tex_escape(r["axes"][a]) for a in axes]
            out.append(" & ".join([name, tex_escape(r["group"]), *shown, params, *cells, *gap_cells]) + r" \\")
        out += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(out) + "\n"
