"""Table 1 of a study in the paper's layout: rows dataset x group (x the values of the study's dotted
grid axes, e.g. one row per model.widths layout; ``by`` picks which), columns non-DP / DP (one block per
DP epsilon) x augmentation (one column per multiplicity), mean ± sample std over seeds, the best
group per dataset and column in bold (as in the paper), DP-gap columns (non-DP minus DP, same
augmentation), and - for studies with published numbers - the paper's value and our delta per cell.

Pure functions: ``build_table`` aggregates cell results (``CellResult``) into a ``Table`` (frozen
dataclasses down to each ``TableCell``); ``to_markdown`` / ``to_csv`` / ``to_latex`` / ``to_summary`` (and
``html.render_table``) only render it. ``stage.write_tables`` is the file edge.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import math
import statistics

from reproduce.errors import ReproduceError
from reproduce.records.result import CellResult
from reproduce.report.paper_values import PublishedTable, published_for
from reproduce.study import NON_PRIVATE, Study, dp_only

METRIC = "test_acc"
# table.md / table.tex / table.csv hold these, in this order: validation accuracy first because the
# paper's Table 1 reports validation accuracy, then test accuracy (our held-out number).
TABLE_METRICS = ("val_acc", "test_acc")
METRIC_NAMES = {
    "val_acc": "validation accuracy",
    "test_acc": "test accuracy",
    "val_auc": "validation AUC",
    "test_auc": "test AUC",
}
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


@dataclasses.dataclass(frozen=True)
class Summary:
    """Mean and sample std of one number over seeds (fractions); ``values``: the seeds' own."""

    mean: float | None
    std: float | None
    n: int
    values: tuple[float, ...] = ()


def summarise(values: list[float]) -> Summary:
    """Mean and sample std (n - 1) over seeds (std 0 for one seed); NaN/None values are dropped."""
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not vals:
        return Summary(mean=None, std=None, n=0)
    return Summary(
        mean=statistics.fmean(vals),
        std=statistics.stdev(vals) if len(vals) > 1 else 0.0,
        n=len(vals),
        values=tuple(vals),
    )


@dataclasses.dataclass(frozen=True)
class Column:
    """One of Table 1's value columns: a privacy setting (non-DP or a DP epsilon) x an augmentation multiplicity."""

    epsilon: float | int | str
    multiplicity: int

    @property
    def private(self) -> bool:
        return self.epsilon != NON_PRIVATE

    @property
    def label(self) -> str:
        return column_label(self.epsilon, self.multiplicity)

    @property
    def gap_label(self) -> str:
        return gap_label(self.epsilon, self.multiplicity)


@dataclasses.dataclass(frozen=True)
class TableCell:
    """One row's value in one column, over seeds; ``best``: the best group of its dataset in this column (as
    shown); ``paper`` / ``delta``: the published value and ours minus it (None where nothing is compared)."""

    column: Column
    mean: float | None
    std: float | None
    n: int
    values: tuple[float, ...]
    best: bool = False
    paper: float | None = None
    delta: float | None = None


@dataclasses.dataclass(frozen=True)
class Gap:
    """The DP gap of a DP column: the non-DP mean at the same augmentation minus the column's mean."""

    column: Column
    value: float | None

    @property
    def label(self) -> str:
        return self.column.gap_label


@dataclasses.dataclass(frozen=True)
class TableRow:
    """Table 1's row of a dataset, group and value of each split-by axis; ``cells`` and ``gaps`` follow the
    table's ``columns`` and ``gap_columns``."""

    dataset: str
    group: str
    axes: tuple[tuple[str, str], ...]  # (dotted axis, shown value), in the table's ``axes`` order
    widths: tuple[int, ...]
    parameters: int | None
    cells: tuple[TableCell, ...]
    gaps: tuple[Gap, ...]

    def cell(self, label: str) -> TableCell:
        """The cell of the column labelled ``label`` (``column_label``)."""
        return next(c for c in self.cells if c.column.label == label)

    def gap(self, label: str) -> float | None:
        """The DP gap of the gap column labelled ``label`` (``gap_label``)."""
        return next(g.value for g in self.gaps if g.label == label)


@dataclasses.dataclass(frozen=True)
class PaperComparison:
    """The published table a Table 1 is compared with, and how the study's setting differs from the paper's."""

    key: str
    citation: str
    url: str | None
    metric: str
    caveats: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Table:
    """Table 1 of one metric (fractions, not percent); ``axes``: the dotted grid axes that split its rows."""

    metric: str
    columns: tuple[Column, ...]
    gap_columns: tuple[Column, ...]
    rows: tuple[TableRow, ...]
    seeds: tuple
    axes: tuple[str, ...]
    paper: PaperComparison | None

    @property
    def labels(self) -> list[str]:
        return [c.label for c in self.columns]


def _shown(x: float | None) -> float | None:
    """The value as displayed (percent, two decimals): bold ties are decided on what the reader sees."""
    return None if x is None else round(100 * x, 2)


def build_table(
    study: Study,
    results: dict[str, CellResult],
    *,
    metric: str = METRIC,
    paper: PublishedTable | None | str = AUTO,
    by: tuple[str, ...] | None = None,
) -> Table:
    """Table 1 of ``metric``, aggregated over seeds. ``results`` maps cell id -> its result (from result.json).

    Args:
        study: the study; every one of its cells needs a result.
        results: cell id -> result.
        metric: the metric shown (a key of ``CellResult.metric``).
        paper: a published table to compare with, None for none, or "auto" (the matching one from
            ``published/``, if any). Values are compared only when ``metric`` is the paper's metric.
        by: the dotted grid axes that split rows (default: all of the study's, in YAML order); cells of
            axes left out are pooled with the seeds. A DP-only axis's non-DP column is the non-private
            reference.
    """
    _require_results(study, results)
    by = _split_axes(study, by)
    columns = table_columns(study)
    cells = tuple(study.cells())
    compare = _comparable(study, metric, paper)
    pool = _Pool(
        study=study,
        results=results,
        metric=metric,
        by=by,
        columns=columns,
        compare=compare,
        cells=cells,
        settings=_cells_by_setting(cells, by),
    )
    rows = [_row(pool, dataset=dataset, group=group, shown=shown) for dataset, group, shown in _row_keys(study, by)]
    return Table(
        metric=metric,
        columns=columns,
        gap_columns=_gap_columns(columns),
        rows=_mark_best(rows),
        seeds=tuple(study.grid.seed),
        axes=by,
        paper=_paper_comparison(study, compare),
    )


@dataclasses.dataclass(frozen=True)
class _Pool:
    """What every row of one table is pooled from."""

    study: Study
    results: dict[str, CellResult]
    metric: str
    by: tuple[str, ...]
    columns: tuple[Column, ...]
    compare: PublishedTable | None
    cells: tuple
    settings: dict[tuple, list]  # (dataset, group, epsilon, multiplicity, *row key) -> its cells


def _require_results(study: Study, results: dict[str, CellResult]) -> None:
    missing = [c.id for c in study.cells() if c.id not in results]
    if missing:
        raise ReproduceError(f"study {study.name}: no result for cell(s) {', '.join(missing)}; run `dvc repro` first")


def _split_axes(study: Study, by: tuple[str, ...] | None) -> tuple[str, ...]:
    axes = study.grid.axes
    by = tuple(axes) if by is None else tuple(by)
    unknown = [p for p in by if p not in axes]
    if unknown:
        raise ReproduceError(
            f"study {study.name}: no grid axis {', '.join(unknown)} to group by (axes: {', '.join(axes) or 'none'})"
        )
    return by


def _comparable(study: Study, metric: str, paper: PublishedTable | None | str) -> PublishedTable | None:
    """The published table to compare ``metric`` with: only one that reports that metric."""
    if paper == AUTO:
        paper = published_for(study)
    return paper if paper is not None and paper.metric == metric else None


def _paper_comparison(study: Study, compare: PublishedTable | None) -> PaperComparison | None:
    if compare is None:
        return None
    return PaperComparison(
        key=compare.key,
        citation=compare.citation,
        url=compare.url,
        metric=compare.metric,
        caveats=tuple(compare.caveats(study)),
    )


def table_columns(study: Study) -> tuple[Column, ...]:
    """The paper's order: non-DP first, then each DP epsilon; the multiplicities within each."""
    g = study.grid
    epsilons = [e for e in g.epsilon if e == NON_PRIVATE] + [e for e in g.epsilon if e != NON_PRIVATE]
    return tuple(Column(e, k) for e in epsilons for k in g.multiplicity)


def _gap_columns(columns: tuple[Column, ...]) -> tuple[Column, ...]:
    """The DP columns, when there is a non-DP column to take their gap from."""
    if all(c.private for c in columns):
        return ()
    return tuple(c for c in columns if c.private)


def _cells_by_setting(cells: tuple, by: tuple[str, ...]) -> dict[tuple, list]:
    out: dict[tuple, list] = {}
    for c in cells:
        out.setdefault((c.dataset, c.group, c.epsilon, c.multiplicity, *_row_key(c, by)), []).append(c)
    return out


def _row_keys(study: Study, by: tuple[str, ...]) -> list[tuple[str, str, tuple[str, ...]]]:
    """(dataset, group, shown values of the ``by`` axes) of every row, in table order."""
    g = study.grid
    combos = list(itertools.product(*([axis_value_label(v) for v in g.axes[p]] for p in by)))
    return [(dataset, group, combo) for dataset in g.dataset for group, combo in itertools.product(g.group, combos)]


def _row(pool: _Pool, *, dataset: str, group: str, shown: tuple[str, ...]) -> TableRow:
    first = next(c for c in pool.cells if (c.dataset, c.group, *_row_key(c, pool.by)) == (dataset, group, *shown))
    widths = tuple(first.widths)
    compare = pool.compare
    # The paper's numbers are for its one layout: rows of a width axis with another have none.
    if (
        compare is not None
        and compare.widths is not None
        and "model.widths" in pool.by
        and widths != tuple(compare.widths)
    ):
        compare = None
    records = [
        [pool.results[c.id] for c in pool.settings[_setting_key(dataset, group, col, pool.by, shown)]]
        for col in pool.columns
    ]
    cells = tuple(
        _cell(
            col,
            recs,
            metric=pool.metric,
            paper=_published(compare, col, dataset=dataset, group=group, delta=pool.study.privacy.delta),
        )
        for col, recs in zip(pool.columns, records)
    )
    parameters = next(
        (r.metrics["parameters"] for recs in records for r in recs if r.metrics.get("parameters") is not None), None
    )
    return TableRow(
        dataset=dataset,
        group=group,
        axes=tuple(zip(pool.by, shown)),
        widths=widths,
        parameters=parameters,
        cells=cells,
        gaps=_gaps(cells),
    )


def _setting_key(dataset: str, group: str, column: Column, by: tuple[str, ...], shown: tuple[str, ...]) -> tuple:
    """The ``_cells_by_setting`` key of a row's cell in ``column``."""
    # A non-DP column has no value of a DP-only axis: the non-private reference of every such row.
    return (
        dataset,
        group,
        column.epsilon,
        column.multiplicity,
        *(None if not column.private and dp_only(p) else v for p, v in zip(by, shown)),
    )


def _published(
    compare: PublishedTable | None, column: Column, *, dataset: str, group: str, delta: float
) -> float | None:
    """The paper's value of a cell as a fraction (None: not compared)."""
    if compare is None:
        return None
    value = compare.lookup(dataset, group, column.epsilon, column.multiplicity, delta=delta)
    return None if value is None else value / compare.scale


def _cell(column: Column, records: list[CellResult], *, metric: str, paper: float | None) -> TableCell:
    s = summarise([r.metric(metric) for r in records])
    return TableCell(
        column=column,
        mean=s.mean,
        std=s.std,
        n=s.n,
        values=s.values,
        paper=paper,
        delta=None if paper is None or s.mean is None else s.mean - paper,
    )


def _gaps(cells: tuple[TableCell, ...]) -> tuple[Gap, ...]:
    means = {c.column: c.mean for c in cells}
    return tuple(
        Gap(col, None if a is None or b is None else a - b)
        for col in _gap_columns(tuple(means))
        for a, b in [(means[Column(NON_PRIVATE, col.multiplicity)], means[col])]
    )


def _mark_best(rows: list[TableRow]) -> tuple[TableRow, ...]:
    """Bold, as in the paper: the best group per dataset and column, judged on the value as shown (ties: all)."""
    top: dict[tuple[str, Column], float] = {}
    for r in rows:
        for c in r.cells:
            v = _shown(c.mean)
            if v is not None and v > top.get((r.dataset, c.column), -math.inf):
                top[(r.dataset, c.column)] = v
    return tuple(
        dataclasses.replace(
            r,
            cells=tuple(
                dataclasses.replace(
                    c, best=_shown(c.mean) is not None and _shown(c.mean) == top.get((r.dataset, c.column))
                )
                for c in r.cells
            ),
        )
        for r in rows
    )


# ---------------------------------------------------------------- text renderings


def _as_list(tables: Table | list[Table]) -> list[Table]:
    return [tables] if isinstance(tables, Table) else list(tables)


def fmt_value(x: float | None, *, signed: bool = False) -> str:
    if x is None:
        return "n/a"
    return f"{100 * x:+.2f}" if signed else f"{100 * x:.2f}"


def fmt_mean_std(s: Summary | TableCell, *, pm: str = "±") -> str:
    if s.mean is None:
        return "n/a"
    if s.n > 1:
        return f"{fmt_value(s.mean)} {pm} {fmt_value(s.std)}"
    return fmt_value(s.mean)


def metric_title(metric: str) -> str:
    return METRIC_NAMES.get(metric, metric)


def caption(study: Study, table: Table) -> str:
    m = table.metric
    text = (
        f"{metric_title(m).capitalize()} ({m}, %), mean ± sample std over seeds "
        f"{', '.join(map(str, table.seeds))}; bold: best group per dataset and column."
    )
    if m == "val_acc":
        text += " The paper's Table 1 reports validation accuracy, so this is the table to compare with it."
    if table.paper:
        text += f" Each cell: ours (paper, Δ = ours − paper, percentage points); paper: {table.paper.citation}"
    return text


def _md_cell(s: TableCell) -> str:
    text = fmt_mean_std(s)
    if s.best and s.mean is not None:
        text = f"**{text}**"
    if s.paper is not None:
        text += f" (paper {fmt_value(s.paper)}, Δ {fmt_value(s.delta, signed=True)})"
    return text


def _params(row: TableRow) -> str:
    return f"{row.parameters:,}" if row.parameters is not None else "n/a"


def _md_table(study: Study, table: Table, *, level: str = "##") -> list[str]:
    head = ["dataset", "group", *table.axes, "params", *table.labels, *(c.gap_label for c in table.gap_columns)]
    lines = [f"{level} {metric_title(table.metric).capitalize()} (%)", "", caption(study, table), ""]
    caveats = table.paper.caveats if table.paper else ()
    lines += [f"- Caveat: {c}." for c in caveats] + ([""] if caveats else [])
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in table.rows:
        cells = [_md_cell(s) for s in r.cells]
        gaps = [fmt_value(g.value) for g in r.gaps]
        lines.append("| " + " | ".join([r.dataset, r.group, *(v for _, v in r.axes), _params(r), *cells, *gaps]) + " |")
    return lines


def to_markdown(study: Study, tables: Table | list[Table]) -> str:
    lines = [f"# {study.name}: Table 1", ""]
    for t in _as_list(tables):
        lines += _md_table(study, t) + [""]
    lines += [
        "DP gap = non-DP mean minus DP mean, same augmentation (percentage points). Privacy statements and "
        f"provenance per cell: results/{study.name}/cells/<cell>/result.json; the report "
        f"reports/{study.name}/index.html has them all."
    ]
    return "\n".join(lines) + "\n"


CSV_HEADER = [
    "dataset",
    "group",
    "parameters",
    "column",
    "metric",
    "mean",
    "std",
    "n_seeds",
    "kind",
    "epsilon",
    "multiplicity",
    "widths",
    "best",
    "paper",
    "delta_vs_paper",
]


def _num(x: float | None) -> str:
    return "" if x is None else f"{x:.6f}"


def csv_axes(tables: Table | list[Table]) -> list[str]:
    """The dotted axes rows are split by (the same for every metric's table): table.csv's last columns."""
    tables = _as_list(tables)
    return list(tables[0].axes) if tables else []


def to_csv(tables: Table | list[Table]) -> str:
    """Long format, fractions (not percent). kind = "cell" (mean/std over seeds) or "gap" (DP gap)."""
    tables = _as_list(tables)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_HEADER + csv_axes(tables))
    for t in tables:
        for r in t.rows:
            widths = "-".join(map(str, r.widths))
            shown = [v for _, v in r.axes]
            for s in r.cells:
                w.writerow(
                    [
                        r.dataset,
                        r.group,
                        r.parameters,
                        s.column.label,
                        t.metric,
                        _num(s.mean),
                        _num(s.std),
                        s.n,
                        "cell",
                        s.column.epsilon,
                        s.column.multiplicity,
                        widths,
                        int(s.best),
                        _num(s.paper),
                        _num(s.delta),
                        *shown,
                    ]
                )
            for g in r.gaps:
                w.writerow(
                    [
                        r.dataset,
                        r.group,
                        r.parameters,
                        g.label,
                        t.metric,
                        _num(g.value),
                        "",
                        "",
                        "gap",
                        "",
                        "",
                        widths,
                        "",
                        "",
                        "",
                        *shown,
                    ]
                )
    return buf.getvalue()


def to_summary(tables: Table | list[Table]) -> dict:
    """Flat numbers for `dvc metrics show`: "<dataset>/<group>/<metric>/<column>" -> fraction (with the
    row's dotted axes after the group: "<dataset>/<group>/model.widths=8-16-32/<metric>/<column>")."""
    out = {}
    for t in _as_list(tables):
        for r in t.rows:
            base = f"{r.dataset}/{r.group}{''.join(f'/{a}={v}' for a, v in r.axes)}/{t.metric}"
            for s in r.cells:
                if s.mean is not None:
                    out[f"{base}/{s.column.label}"] = round(s.mean, 6)
                if s.delta is not None:
                    out[f"{base}/{s.column.label}/delta_vs_paper"] = round(s.delta, 6)
            for g in r.gaps:
                if g.value is not None:
                    out[f"{base}/{g.label}"] = round(g.value, 6)
    return out


# ---------------------------------------------------------------- LaTeX

_TEX_ESCAPES = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def tex_escape(text: str) -> str:
    return "".join(_TEX_ESCAPES.get(ch, ch) for ch in str(text))


def _tex_cell(s: TableCell, *, with_paper: bool) -> str:
    if s.mean is None:
        return "n/a"
    mean = fmt_value(s.mean)
    mean = rf"\mathbf{{{mean}}}" if s.best else mean
    text = f"${mean} \\pm {fmt_value(s.std)}$" if s.n > 1 else f"${mean}$"
    if with_paper:
        text += (
            r" {\scriptsize(" + fmt_value(s.paper) + r"; $" + fmt_value(s.delta, signed=True) + r"$)}"
            if s.paper is not None
            else r" {\scriptsize(--)}"
        )
    return text


def _tex_aug(k: int) -> str:
    return "no aug" if k == 1 else rf"aug $\times{k}$"


def _tex_eps(e) -> str:
    return "non-DP" if e == NON_PRIVATE else rf"DP $\varepsilon={e:g}$"


def column_blocks(names: list[str]) -> list[tuple[str, int]]:
    """Runs of equal header names, (name, span), for a header row that spans its columns' blocks."""
    blocks: list[tuple[str, int]] = []
    for name in names:
        if blocks and blocks[-1][0] == name:
            blocks[-1] = (name, blocks[-1][1] + 1)
        else:
            blocks.append((name, 1))
    return blocks


def _tex_header(table: Table) -> list[str]:
    """The two header rows and their rules: one block per epsilon (its multiplicities), then per DP gap epsilon."""
    gaps = table.gap_columns
    blocks = column_blocks([_tex_eps(c.epsilon) for c in table.columns])
    blocks += column_blocks([rf"gap $\varepsilon={c.epsilon:g}$" for c in gaps])
    axes = table.axes
    top, rules, start = [" "] * (3 + len(axes)), [], 4 + len(axes)
    for name, n in blocks:
        top.append(rf"\multicolumn{{{n}}}{{c}}{{{name}}}")
        rules.append(rf"\cmidrule(lr){{{start}-{start + n - 1}}}")
        start += n
    second = [
        "Dataset",
        "Group",
        *[tex_escape(a) for a in axes],
        "Params",
        *[_tex_aug(c.multiplicity) for c in (*table.columns, *gaps)],
    ]
    return [" & ".join(top) + r" \\", " ".join(rules), " & ".join(second) + r" \\"]


def _tex_rows(table: Table) -> list[str]:
    out, previous = [], None
    for r in table.rows:
        if previous is not None and r.dataset != previous:
            out.append(r"\midrule")
        name = tex_escape(r.dataset) if r.dataset != previous else ""
        previous = r.dataset
        params = f"{r.parameters:,}".replace(",", "{,}") if r.parameters is not None else "n/a"
        cells = [_tex_cell(s, with_paper=table.paper is not None) for s in r.cells]
        gap_cells = [f"${fmt_value(g.value, signed=True)}$" if g.value is not None else "n/a" for g in r.gaps]
        shown = [tex_escape(v) for _, v in r.axes]
        out.append(" & ".join([name, tex_escape(r.group), *shown, params, *cells, *gap_cells]) + r" \\")
    return out


def to_latex(study: Study, tables: Table | list[Table]) -> str:
    """One booktabs ``table`` per metric (needs \\usepackage{booktabs})."""
    out = [f"% {study.name}: Table 1, generated by reproduce.report (requires \\usepackage{{booktabs}})."]
    for t in _as_list(tables):
        cap = tex_escape(caption(study, t)).replace("±", r"$\pm$").replace("Δ", r"$\Delta$").replace("−", "-")
        spec = "ll" + "l" * len(t.axes) + "r" * (1 + len(t.columns) + len(t.gap_columns))
        out += [
            "",
            r"\begin{table}[t]",
            r"\centering",
            r"\small",
            rf"\caption{{{cap}}}",
            rf"\label{{tab:{study.name}-{t.metric.replace('_', '-')}}}",
            r"\begin{tabular}{" + spec + "}",
            r"\toprule",
            *_tex_header(t),
            r"\midrule",
            *_tex_rows(t),
            r"\bottomrule",
            r"\end{tabular}",
            r"\end{table}",
        ]
    return "\n".join(out) + "\n"
