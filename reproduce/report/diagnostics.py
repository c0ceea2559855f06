"""The optimisation diagnostics of a study over steps (``reproduce.metrics.clipping``): figures and a summary.

Per DP setting (dataset, epsilon, multiplicity), group and combination of the study's dotted axes that
are not DP-only (``where``, e.g. a width layout): one figure, one panel per diagnostic, one solid line
per combination of the DP-only axes (e.g. optimiser x clipping rule), mean over seeds; dashed: the
group's non-private reference, where the diagnostic is defined without clipping (the update's cosine
with the mean gradient). A study without dotted axes has one DP line per figure.

The summary (``diagnostics_summary``) has one row per such line: the mean over seeds of the test
accuracy and, over logged steps and seeds, of each diagnostic, with the last logged clipping norm;
``axis_means`` averages it per value of each DP-only axis and per group; ``diagnostics_section`` is both,
as the report stage computes them once for the page. The aggregation is pure
(tests check it by hand); drawing reuses the report's figure helpers.
"""

from __future__ import annotations

import dataclasses
import statistics
from pathlib import Path

from reproduce.records.result import CellResult
from reproduce.report.figures import FigureFile, _matches, _pyplot, _save, dp_settings, figure_subsets, group_name
from reproduce.study import NON_PRIVATE, Study, dp_only, matrix_key

# (key, panel title, log scale); the q10-q90 band is drawn around the median's line.
PANELS = (
    ("share_clipped", "share of samples clipped (||g_i|| > C)", False),
    ("grad_norm_q50", "per-sample gradient norm: median, q10-q90", True),
    ("clip_bias_cosine", "clipping bias: cos(mean clipped, mean unclipped)", False),
    ("clip_bias_norm_ratio", "clipping bias: |mean clipped| / |mean unclipped|", True),
    ("noise_to_signal", "noise-to-signal |noise| / |clipped sum|", True),
    ("update_cosine", "cos(applied update, mean unclipped gradient)", False),
    ("max_grad_norm", "clipping norm C", True),
)
# What the summary averages over logged steps (the clipping norm: its last value instead).
SUMMARY_KEYS = (
    "share_clipped",
    "grad_norm_q50",
    "clip_bias_cosine",
    "clip_bias_norm_ratio",
    "noise_to_signal",
    "update_cosine",
)
LINE_COLOURS = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)


# ---------------------------------------------------------------- pure aggregation


def diagnostic_series(records: list[CellResult], key: str) -> tuple[list[int], list[float]]:
    """Mean over seeds of ``steps[*].diagnostics[key]`` at each step every seed with the key recorded."""
    per_seed = []
    for r in records:
        values = {
            s.step: float(s.diagnostics[key]) for s in r.steps if s.diagnostics and s.diagnostics.get(key) is not None
        }
        if values:
            per_seed.append(values)
    if not per_seed:
        return [], []
    at = sorted(set.intersection(*(set(v) for v in per_seed)))
    return at, [statistics.fmean(v[i] for v in per_seed) for i in at]


def _step_mean(record: CellResult, key: str) -> float | None:
    values = [float(s.diagnostics[key]) for s in record.steps if s.diagnostics and s.diagnostics.get(key) is not None]
    return statistics.fmean(values) if values else None


def _last(record: CellResult, key: str) -> float | None:
    values = [float(s.diagnostics[key]) for s in record.steps if s.diagnostics and s.diagnostics.get(key) is not None]
    return values[-1] if values else None


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def _dp_axes(study: Study) -> list[str]:
    return [p for p in study.grid.axes if dp_only(p)]


def _lines(
    study: Study, results: dict[str, CellResult], dataset: str, group: str, epsilon, multiplicity: int, where: dict
) -> list[tuple[tuple, list[CellResult]]]:
    """(DP-only axes' values, the results of those cells) for every combination, in grid order."""
    lines: dict[tuple, list[CellResult]] = {}
    dp_axes = _dp_axes(study)
    for c in study.cells():
        if (c.dataset, c.group, c.epsilon, c.multiplicity) != (dataset, group, epsilon, multiplicity):
            continue
        if not _matches(c, where):
            continue
        key = tuple(c.axis(p) for p in dp_axes) if epsilon != NON_PRIVATE else ()
        lines.setdefault(key, [])
        if c.id in results:
            lines[key].append(results[c.id])
    return list(lines.items())


def line_label(study: Study, key: tuple) -> str:
    """A line's label: its DP-only axes' values ("adam, adaptive"), or "DP" without such axes."""
    return ", ".join(str(v) for v in key) if key else "DP"


@dataclasses.dataclass(frozen=True)
class DiagnosticsRow:
    """One figure line's summary: means over seeds (and, for the diagnostics, over logged steps)."""

    dataset: str
    epsilon: float | int | str
    multiplicity: int
    group: str
    where: tuple[tuple[str, object], ...]  # the figure's axes that are not DP-only: (path, value)
    axes: tuple[tuple[str, object], ...]  # the line's DP-only axes (none for a non-private row)
    n: int  # results
    test_acc: float | None
    step_means: dict[str, float | None]  # per SUMMARY_KEYS entry, in that order
    max_grad_norm_last: float | None  # the clipping norm at the last logged step


@dataclasses.dataclass(frozen=True)
class AxisMean:
    """The mean over the DP rows with one value of an axis (or group) of their test accuracy and share clipped."""

    value: object
    test_acc: float | None
    share_clipped: float | None
    rows: int


@dataclasses.dataclass(frozen=True)
class DiagnosticsSummary:
    """The report's diagnostics section: its rows and their means per value of each DP-only axis and group."""

    rows: tuple[DiagnosticsRow, ...]
    axis_means: dict[str, tuple[AxisMean, ...]]  # axis path (or "group") -> one per value with rows


def diagnostics_summary(study: Study, results: dict[str, CellResult]) -> list[DiagnosticsRow]:
    """One row per figure line, non-private references included (see the module docstring)."""
    epsilons = [e for e in study.grid.epsilon if e == NON_PRIVATE] + [e for e in study.grid.epsilon if e != NON_PRIVATE]
    dp_axes = _dp_axes(study)
    return [
        _summary_row(
            recs,
            dataset=dataset,
            epsilon=epsilon,
            multiplicity=k,
            group=group,
            where=where,
            axes=tuple(zip(dp_axes, key)),
        )
        for dataset in study.grid.dataset
        for epsilon in epsilons
        for k in study.grid.multiplicity
        for where in figure_subsets(study, keep=tuple(dp_axes))
        for group in study.grid.group
        for key, recs in _lines(study, results, dataset, group, epsilon, k, where)
    ]


def _summary_row(
    records: list[CellResult], *, dataset: str, epsilon, multiplicity: int, group: str, where: dict, axes: tuple
) -> DiagnosticsRow:
    return DiagnosticsRow(
        dataset=dataset,
        epsilon=epsilon,
        multiplicity=multiplicity,
        group=group,
        where=tuple(where.items()),
        axes=axes,
        n=len(records),
        test_acc=_mean(r.metric("test_acc") for r in records),
        step_means={name: _mean(_step_mean(r, name) for r in records) for name in SUMMARY_KEYS},
        max_grad_norm_last=_mean(_last(r, "max_grad_norm") for r in records),
    )


def axis_means(study: Study, rows: list[DiagnosticsRow]) -> dict[str, tuple[AxisMean, ...]]:
    """Per DP-only axis (and "group"), the mean over DP rows of test accuracy and share clipped per value."""
    dp_rows = [r for r in rows if r.epsilon != NON_PRIVATE and r.n]
    out: dict[str, tuple[AxisMean, ...]] = {}
    for axis in ["group", *_dp_axes(study)]:
        values = list(study.grid.group) if axis == "group" else list(study.grid.axes[axis])
        per = []
        for v in values:
            sub = [r for r in dp_rows if (r.group if axis == "group" else dict(r.axes).get(axis)) == v]
            if sub:
                per.append(
                    AxisMean(
                        value=v,
                        test_acc=_mean(r.test_acc for r in sub),
                        share_clipped=_mean(r.step_means["share_clipped"] for r in sub),
                        rows=len(sub),
                    )
                )
        out[axis] = tuple(per)
    return out


def diagnostics_section(study: Study, results: dict[str, CellResult]) -> DiagnosticsSummary | None:
    """The report's diagnostics section; None when no result recorded step diagnostics."""
    if not has_diagnostics(results):
        return None
    rows = diagnostics_summary(study, results)
    return DiagnosticsSummary(rows=tuple(rows), axis_means=axis_means(study, rows))


def has_diagnostics(results: dict[str, CellResult]) -> bool:
    """Whether any result recorded step diagnostics (results written before them did not)."""
    return any(s.diagnostics for r in results.values() for s in r.steps)


# ---------------------------------------------------------------- drawing


def _stem(dataset: str, epsilon, multiplicity: int, group: str, where: dict) -> str:
    extra = "".join(
        f"-{matrix_key(p)}{'_'.join(map(str, v)) if isinstance(v, (list, tuple)) else v}" for p, v in where.items()
    )
    return f"diagnostics-{dataset}-eps{float(epsilon):g}-k{multiplicity}-{group}{extra}"


def draw_diagnostics(
    study: Study,
    results: dict[str, CellResult],
    dataset: str,
    epsilon,
    multiplicity: int,
    group: str,
    path: Path,
    *,
    where: dict | None = None,
) -> FigureFile | None:
    """One panel per diagnostic over steps; None when no cell of the setting recorded diagnostics."""
    where = where or {}
    lines = [(key, recs) for key, recs in _lines(study, results, dataset, group, epsilon, multiplicity, where) if recs]
    references = [recs for _, recs in _lines(study, results, dataset, group, NON_PRIVATE, multiplicity, where) if recs]
    if not any(s.diagnostics for _, recs in lines for r in recs for s in r.steps):
        return None
    plt = _pyplot()
    cols = 4
    rows_n = -(-len(PANELS) // cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(4.2 * cols, 3.0 * rows_n), squeeze=False)
    for (key, title, log), ax in zip(PANELS, axes.flat):
        for i, (line, recs) in enumerate(lines):
            colour = LINE_COLOURS[i % len(LINE_COLOURS)]
            steps, values = diagnostic_series(recs, key)
            if steps:
                ax.plot(steps, values, color=colour, linewidth=1.3, label=line_label(study, line))
            if key == "grad_norm_q50":
                lo, hi = diagnostic_series(recs, "grad_norm_q10"), diagnostic_series(recs, "grad_norm_q90")
                if lo[0] and lo[0] == hi[0]:
                    ax.fill_between(lo[0], lo[1], hi[1], color=colour, alpha=0.12, linewidth=0)
        for recs in references:
            steps, values = diagnostic_series(recs, key)
            if steps:
                ax.plot(steps, values, color="#000000", linestyle="--", linewidth=1.2, label="non-private")
        ax.set_title(title, fontsize=8)
        ax.set_xlabel("optimizer step")
        if log and any(v > 0 for line in ax.lines for v in line.get_ydata()):
            ax.set_yscale("log")
    for ax in list(axes.flat)[len(PANELS) :]:
        ax.axis("off")
    handles, labels = axes.flat[len(PANELS) - 2].get_legend_handles_labels()  # update_cosine: every line
    list(axes.flat)[-1].legend(
        handles,
        labels,
        loc="center",
        fontsize=8,
        title=", ".join(p.split(".")[-2] if p.endswith(".name") else p.split(".")[-1] for p in _dp_axes(study)) or None,
    )
    setting = f"ε={float(epsilon):g}, {'no aug' if multiplicity == 1 else f'aug ×{multiplicity}'}"
    where_text = ", ".join(f"{p}={v}" for p, v in where.items())
    fig.suptitle(
        f"{dataset}, {group_name(group)}: diagnostics per logged step, DP {setting}"
        + (f", {where_text}" if where_text else ""),
        fontsize=10,
    )
    fig.tight_layout()
    _save(fig, path)
    seeds = ", ".join(map(str, study.grid.seed))
    return FigureFile(
        path=path,
        kind="diagnostics",
        dataset=dataset,
        epsilon=epsilon,
        multiplicity=multiplicity,
        where=tuple(where.items()),
        title=f"Optimisation diagnostics — {dataset}, {group}, DP {setting}"
        + (f", {where_text}" if where_text else ""),
        caption=(
            "Per logged step (training.log_every), mean over seeds " + seeds + ". Solid: DP cells, one line per "
            "combination of the DP-only grid axes; dashed: the non-private reference (only the update's cosine "
            "with the mean gradient is defined without clipping). Share clipped counts ||g_i|| > C (automatic "
            "clipping scales every sample); the band is the q10-q90 range of per-sample gradient norms; clipping "
            "bias compares the mean clipped with the mean unclipped gradient; noise-to-signal is |noise| over "
            "the clipped sum's norm. All but C read the training data without noise (privacy statements)."
        ),
    )


def write_diagnostics_figures(study: Study, results: dict[str, CellResult], out_dir: Path) -> list[FigureFile]:
    """Every diagnostics figure of the study (none when no result recorded diagnostics)."""
    if not has_diagnostics(results):
        return []
    figures = []
    for dataset, eps, k in dp_settings(study):
        for where in figure_subsets(study, keep=tuple(_dp_axes(study))):
            for group in study.grid.group:
                path = Path(out_dir) / f"{_stem(dataset, eps, k, group, where)}.png"
                drawn = draw_diagnostics(study, results, dataset, eps, k, group, path, where=where)
                if drawn is not None:
                    figures.append(drawn)
    return figures
