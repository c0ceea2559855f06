"""Figures of a study's report (PNG, matplotlib Agg), drawn from existing cell results only.

Per DP setting (dataset, epsilon, augmentation multiplicity):

- Figure 1 (the paper's Figure 1, two panels). Left: DP test accuracy over model size (parameter
  count, log axis), one series per group; a group with several width layouts gets a line through its
  points, each point labelled with its layout. Right: l0 gradient sparsity (share of gradient entries
  with |g| < 1e-5) over optimizer steps, one colour per group; solid = the private update (clipped +
  noised), dashed = the clipped sum before noise; mean over seeds at each logged step.
- Gradient-weight alignment (GWA, as in the authors' reference code) per epoch, one colour per
  group; solid = the DP cells of the setting, dashed = the group's non-private cells (same
  multiplicity) when the grid has them; mean over seeds, from ``epochs[*].gwa``.
- A reliability diagram, conventional (e) vs C4 when the grid has both (otherwise every group), on
  the test split: bins pooled over all seeds, count-weighted (= binning every seed's test predictions
  together with the same equal-width bins), from ``metrics_detail.reliability_test``.

A study with dotted grid axes gets these per combination of their values (``where``), except that
Figure 1 puts every ``model.widths`` layout on its size axis.

The aggregation helpers are pure (tests check them); drawing is kept small so a report takes seconds.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import statistics
from pathlib import Path

from reproduce.atomic import write_atomic
from reproduce.errors import ReproduceError
from reproduce.metrics.calibration import ReliabilityBin
from reproduce.records.result import CellResult
from reproduce.study import NON_PRIVATE, Study, dp_only, matrix_key

GROUP_COLOURS = {
    "e": "#222222",
    "C1": "#8c564b",
    "C4": "#1f77b4",
    "C8": "#2ca02c",
    "C16": "#9467bd",
    "O2": "#d62728",
    "SO2": "#ff7f0e",
    "D4": "#17becf",
    "D8": "#bcbd22",
}
_EXTRA = ["#e377c2", "#7f7f7f", "#aec7e8", "#ffbb78", "#98df8a", "#c5b0d5"]
DPI = 100


@dataclasses.dataclass(frozen=True)
class FigureFile:
    path: Path
    kind: str  # "figure1" | "alignment" | "reliability"
    title: str
    caption: str
    dataset: str
    epsilon: float | int
    multiplicity: int
    where: tuple = ()  # (dotted axis, value) the figure is restricted to


def group_colour(group: str, groups: list[str]) -> str:
    if group in GROUP_COLOURS:
        return GROUP_COLOURS[group]
    others = [g for g in groups if g not in GROUP_COLOURS]
    return _EXTRA[others.index(group) % len(_EXTRA)] if group in others else _EXTRA[0]


def group_name(group: str) -> str:
    return "conventional (e)" if group == "e" else group


def dp_settings(study: Study) -> list[tuple[str, float | int, int]]:
    g = study.grid
    return [(d, e, k) for d in g.dataset for e in g.epsilon if e != NON_PRIVATE for k in g.multiplicity]


# Figure 1's x axis is model size, so its layouts are one figure's points, not separate figures.
SIZE_AXIS = "model.widths"


def figure_subsets(study: Study, *, keep: tuple[str, ...] = ()) -> list[dict]:
    """Every combination of the study's dotted axes' values, except the axes in ``keep`` (drawn
    within one figure); [{}] for a study without dotted axes."""
    axes = {p: v for p, v in study.grid.axes.items() if p not in keep}
    return [dict(zip(axes, combo)) for combo in itertools.product(*axes.values())]


def _matches(cell, where: dict) -> bool:
    # A non-private cell has no DP-only axis value: it is the reference of every such subset.
    return all(_same(cell.axis(p), v) for p, v in where.items() if cell.private or not dp_only(p))


def _same(a, b) -> bool:
    return (list(a) if isinstance(a, tuple) else a) == (list(b) if isinstance(b, tuple) else b)


def _where_label(where: dict) -> str:
    return ", ".join(f"{p}={'-'.join(map(str, v)) if isinstance(v, (list, tuple)) else v}" for p, v in where.items())


def _records(
    study: Study,
    results: dict[str, CellResult],
    dataset: str,
    group: str,
    epsilon,
    multiplicity: int,
    where: dict | None = None,
) -> list[CellResult]:
    return [
        results[c.id]
        for c in study.cells()
        if (c.dataset, c.group, c.epsilon, c.multiplicity) == (dataset, group, epsilon, multiplicity)
        and _matches(c, where or {})
        and c.id in results
    ]


# ---------------------------------------------------------------- pure aggregation


@dataclasses.dataclass(frozen=True)
class SizePoint:
    """Figure 1's point of one width layout: mean parameter count, accuracy (a fraction) over seeds."""

    widths: tuple[int, ...]
    parameters: float
    mean: float
    std: float
    n: int


def accuracy_by_size(records: list[CellResult], *, metric: str = "test_acc") -> list[SizePoint]:
    """One point per width layout, by increasing parameter count."""
    by_widths: dict[tuple, list[CellResult]] = {}
    for r in records:
        by_widths.setdefault(r.widths, []).append(r)
    points = []
    for widths, rs in by_widths.items():
        vals = [r.metric(metric) for r in rs if r.metric(metric) is not None]
        params = [r.metric("parameters") for r in rs if r.metric("parameters") is not None]
        if not vals or not params:
            continue
        points.append(
            SizePoint(
                widths=tuple(widths),
                parameters=statistics.fmean(params),
                mean=statistics.fmean(vals),
                std=statistics.stdev(vals) if len(vals) > 1 else 0.0,
                n=len(vals),
            )
        )
    return sorted(points, key=lambda p: p.parameters)


def _mean_over_seeds(records: list[CellResult], rows: str, index: str, key: str) -> tuple[list[int], list[float]]:
    """Mean over seeds of ``r.<rows>[*].<key>`` at each ``index`` value that every seed with the key recorded."""
    per_seed = []
    for r in records:
        values = {
            getattr(row, index): float(getattr(row, key))
            for row in getattr(r, rows)
            if getattr(row, key) is not None and math.isfinite(float(getattr(row, key)))
        }
        if values:
            per_seed.append(values)
    if not per_seed:
        return [], []
    at = sorted(set.intersection(*(set(s) for s in per_seed)))
    return at, [statistics.fmean(s[i] for s in per_seed) for i in at]


def mean_series(records: list[CellResult], key: str) -> tuple[list[int], list[float]]:
    """Mean over seeds of ``steps[*].<key>`` at each step logged by every seed that has the key."""
    return _mean_over_seeds(records, "steps", "step", key)


def mean_epoch_series(records: list[CellResult], key: str = "gwa") -> tuple[list[int], list[float]]:
    """Mean over seeds of ``epochs[*].<key>`` at each epoch recorded (with a finite value) by every seed."""
    return _mean_over_seeds(records, "epochs", "epoch", key)


def pooled_reliability(records: list[CellResult]) -> list[ReliabilityBin] | None:
    """Test-split bins pooled over seeds: count-weighted mean confidence and accuracy per bin.

    Identical to binning all seeds' predictions together (same edges). None when no seed recorded
    bins; seeds whose bin edges differ from the first seed's are refused with ValueError.
    """
    seeds = [r.reliability_test for r in records if r.reliability_test]
    if not seeds:
        return None
    edges = [(b.lower, b.upper) for b in seeds[0]]
    pooled = []
    for i, (lo, hi) in enumerate(edges):
        n = conf = acc = 0.0
        for bins in seeds:
            if len(bins) != len(edges) or not (math.isclose(bins[i].lower, lo) and math.isclose(bins[i].upper, hi)):
                raise ValueError("reliability bins differ between seeds; cannot pool them")
            c = bins[i].count
            if c:
                n += c
                conf += c * bins[i].confidence
                acc += c * bins[i].accuracy
        pooled.append(
            ReliabilityBin(
                lower=lo, upper=hi, count=int(n), confidence=conf / n if n else None, accuracy=acc / n if n else None
            )
        )
    return pooled


def _mean_metric(records: list[CellResult], key: str) -> float | None:
    vals = [r.metric(key) for r in records if r.metric(key) is not None]
    return statistics.fmean(vals) if vals else None


# ---------------------------------------------------------------- drawing


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.rcParams.update(
        {"font.size": 9, "axes.titlesize": 10, "legend.fontsize": 8, "axes.grid": True, "grid.alpha": 0.3}
    )
    return plt


def _save(fig, path: Path) -> None:
    """Write ``fig`` as a PNG atomically and release it (pyplot keeps every open figure alive)."""
    write_atomic(path, lambda fh: fig.savefig(fh, format="png", dpi=DPI, metadata={"Software": None}))
    _pyplot().close(fig)


def _setting(epsilon, multiplicity: int, where: dict | None = None) -> str:
    text = f"ε={float(epsilon):g}, {'no aug' if multiplicity == 1 else f'aug ×{multiplicity}'}"
    return f"{text}, {_where_label(where)}" if where else text


def _stem(kind: str, dataset: str, epsilon, multiplicity: int, where: dict | None = None) -> str:
    extra = "".join(
        f"-{matrix_key(p)}{'_'.join(map(str, v)) if isinstance(v, (list, tuple)) else v}"
        for p, v in (where or {}).items()
    )
    return f"{kind}-{dataset}-eps{float(epsilon):g}-k{multiplicity}{extra}"


def draw_figure1(
    study: Study,
    results: dict[str, CellResult],
    dataset: str,
    epsilon,
    multiplicity: int,
    path: Path,
    *,
    where: dict | None = None,
) -> FigureFile:
    plt = _pyplot()
    groups = list(study.grid.group)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 3.8))
    setting = _setting(epsilon, multiplicity, where)
    any_sparsity = False
    sparsity_groups: list[str] = []
    # Point labels: the group, plus its width layout where the figure has more than one layout.
    layouts = {r.widths for g in groups for r in _records(study, results, dataset, g, epsilon, multiplicity, where)}
    for group in groups:
        recs = _records(study, results, dataset, group, epsilon, multiplicity, where)
        colour = group_colour(group, groups)
        points = accuracy_by_size(recs)
        if points:
            xs = [p.parameters for p in points]
            left.errorbar(
                xs,
                [100 * p.mean for p in points],
                yerr=[100 * p.std for p in points],
                color=colour,
                marker="o",
                capsize=3,
                linestyle="-" if len(points) > 1 else "none",
                label=f"{group_name(group)} (n={points[0].n})",
            )
            for p in points:
                text = group if len(layouts) == 1 else f"{group} {'-'.join(map(str, p.widths))}"
                left.annotate(
                    text,
                    (p.parameters, 100 * p.mean),
                    textcoords="offset points",
                    xytext=(5, 3),
                    fontsize=7,
                    color=colour,
                )
        for key, style in (("l0_update", "-"), ("l0_clipped", "--")):
            steps, vals = mean_series(recs, key)
            if steps:
                any_sparsity = True
                right.plot(steps, vals, linestyle=style, color=colour, linewidth=1.4)
                if group not in sparsity_groups:
                    sparsity_groups.append(group)
    xs_all = [x for line in left.lines for x in line.get_xdata()]
    log = bool(xs_all) and min(xs_all) > 0 and max(xs_all) / min(xs_all) > 10
    if log:
        left.set_xscale("log")
    else:
        from matplotlib.ticker import FuncFormatter

        left.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:,.0f}"))
    left.margins(x=0.15, y=0.1)
    left.set_xlabel("parameters (count" + (", log scale)" if log else ")"))
    left.set_ylabel("DP test accuracy (%)")
    left.set_title(f"{dataset}: DP accuracy vs model size ({setting})")
    if left.lines or left.collections:
        left.legend(loc="best")
    right.set_xlabel("optimizer step")
    right.set_ylabel("l0 sparsity: share of |g| < 1e-5")
    right.set_title(f"{dataset}: gradient sparsity during DP training")
    if any_sparsity:
        from matplotlib.lines import Line2D

        handles = [
            Line2D([], [], color=group_colour(g, groups), linewidth=2, label=group_name(g)) for g in sparsity_groups
        ]
        handles += [
            Line2D([], [], color="#555555", linestyle="-", label="private update (clipped + noised)"),
            Line2D([], [], color="#555555", linestyle="--", label="clipped sum, before noise"),
        ]
        right.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    else:
        right.text(0.5, 0.5, "no per-step records", ha="center", va="center", transform=right.transAxes)
    fig.subplots_adjust(left=0.06, right=0.79, bottom=0.14, top=0.9, wspace=0.22)
    _save(fig, path)
    seeds = ", ".join(map(str, study.grid.seed))
    return FigureFile(
        path=path,
        kind="figure1",
        dataset=dataset,
        epsilon=epsilon,
        multiplicity=multiplicity,
        where=tuple((where or {}).items()),
        title=f"Figure 1 — {dataset}, DP {setting}",
        caption=(
            f"Left: DP test accuracy (%) over parameter count, mean ± sample std over seeds {seeds}; points "
            "are labelled with the group (and its width layout where layouts differ). Right: l0 gradient sparsity (share of gradient entries with |g| < 1e-5) "
            "over optimizer steps, mean over seeds; solid: the private update (clipped and noised), dashed: "
            "the clipped sum before noise."
        ),
    )


def draw_alignment(
    study: Study,
    results: dict[str, CellResult],
    dataset: str,
    epsilon,
    multiplicity: int,
    path: Path,
    *,
    where: dict | None = None,
) -> FigureFile | None:
    """GWA per epoch, DP (solid) and non-private (dashed) per group; None if no cell recorded it."""
    groups = list(study.grid.group)
    series = []
    for group in groups:
        for eps, style in ((epsilon, "-"), (NON_PRIVATE, "--")):
            if eps == NON_PRIVATE and NON_PRIVATE not in study.grid.epsilon:
                continue
            epochs, values = mean_epoch_series(_records(study, results, dataset, group, eps, multiplicity, where))
            if epochs:
                series.append((group, style, epochs, values))
    if not series:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    for group, style, epochs, values in series:
        ax.plot(
            [e + 1 for e in epochs],
            values,
            linestyle=style,
            marker="o",
            markersize=3,
            color=group_colour(group, groups),
            linewidth=1.4,
        )
    ax.axhline(0.0, color="#bbbbbb", linewidth=0.8)
    from matplotlib.lines import Line2D

    shown = list(dict.fromkeys(g for g, *_ in series))
    handles = [Line2D([], [], color=group_colour(g, groups), linewidth=2, label=group_name(g)) for g in shown]
    handles.append(Line2D([], [], color="#555555", linestyle="-", label=f"DP {_setting(epsilon, multiplicity, where)}"))
    if any(style == "--" for _, style, *_ in series):
        handles.append(Line2D([], [], color="#555555", linestyle="--", label="non-private"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0, fontsize=8)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("GWA = mean cos / (kurtosis + 1.2)")
    ax.set_title(f"{dataset}: gradient-weight alignment during training", fontsize=10)
    fig.subplots_adjust(left=0.11, right=0.74, bottom=0.14, top=0.9)
    _save(fig, path)
    seeds = ", ".join(map(str, study.grid.seed))
    return FigureFile(
        path=path,
        kind="alignment",
        dataset=dataset,
        epsilon=epsilon,
        multiplicity=multiplicity,
        where=tuple((where or {}).items()),
        title=f"Gradient-weight alignment — {dataset}, {_setting(epsilon, multiplicity, where)}",
        caption=(
            "Per epoch, the cosine between each training sample's final-layer update direction and the final "
            "layer's weights, summarised as mean / (excess kurtosis + 1.2) (the authors' reference code, "
            f"hlzl/gwa); mean over seeds {seeds}. Solid: DP cells; dashed: non-private cells of the same group."
        ),
    )


def reliability_groups(study: Study) -> list[str]:
    groups = list(study.grid.group)
    return ["e", "C4"] if {"e", "C4"} <= set(groups) else groups


def draw_reliability(
    study: Study,
    results: dict[str, CellResult],
    dataset: str,
    epsilon,
    multiplicity: int,
    path: Path,
    *,
    where: dict | None = None,
) -> FigureFile | None:
    panels = []
    for group in reliability_groups(study):
        recs = _records(study, results, dataset, group, epsilon, multiplicity, where)
        try:
            bins = pooled_reliability(recs)
        except ValueError as e:  # results written by different versions of the code
            raise ReproduceError(
                f"cells {', '.join(r.cell for r in recs)}: {e}; retrain them with one version of the "
                "code (`dvc repro`) before reporting"
            ) from None
        if bins is not None:
            n_seeds = sum(1 for r in recs if r.reliability_test)
            panels.append((group, bins, n_seeds, _mean_metric(recs, "test_ece"), _mean_metric(recs, "test_brier")))
    if not panels:
        return None
    plt = _pyplot()
    groups = list(study.grid.group)
    fig, axes = plt.subplots(
        2,
        len(panels),
        figsize=(3.6 * len(panels), 4.4),
        squeeze=False,
        gridspec_kw={"height_ratios": [3, 1]},
        sharex=True,
    )
    for j, (group, bins, n_seeds, ece, brier) in enumerate(panels):
        top, bottom = axes[0][j], axes[1][j]
        colour = group_colour(group, groups)
        filled = [b for b in bins if b.count]
        centres = [(b.lower + b.upper) / 2 for b in filled]
        widths = [b.upper - b.lower for b in filled]
        top.bar(
            centres,
            [b.accuracy for b in filled],
            width=widths,
            color=colour,
            alpha=0.75,
            edgecolor="white",
            label="accuracy",
        )
        top.plot(
            [b.confidence for b in filled],
            [b.accuracy for b in filled],
            "o",
            color="#d62728",
            markersize=3,
            label="(mean confidence, accuracy)",
        )
        top.plot([0, 1], [0, 1], "--", color="#888888", linewidth=1, label="perfect calibration")
        top.set_xlim(0, 1)
        top.set_ylim(0, 1)
        top.set_ylabel("accuracy (fraction)")
        extra = [f"ECE {ece:.3f}" if ece is not None else None, f"Brier {brier:.3f}" if brier is not None else None]
        top.set_title(
            f"{group_name(group)}: " + ", ".join(x for x in extra if x) + f" ({n_seeds} seed{'s' * (n_seeds != 1)})",
            fontsize=9,
        )
        if j == 0:
            top.legend(loc="upper left", fontsize=7)
        total = sum(b.count for b in bins) or 1
        bottom.bar(
            centres, [b.count / total for b in filled], width=widths, color=colour, alpha=0.75, edgecolor="white"
        )
        bottom.set_xlabel("confidence (max probability)")
        bottom.set_ylabel("share of samples")
    fig.suptitle(f"{dataset}: reliability on the test split, DP {_setting(epsilon, multiplicity, where)}", fontsize=10)
    fig.subplots_adjust(
        left=0.1 if len(panels) > 1 else 0.17, right=0.98, bottom=0.11, top=0.86, wspace=0.3, hspace=0.08
    )
    _save(fig, path)
    return FigureFile(
        path=path,
        kind="reliability",
        dataset=dataset,
        epsilon=epsilon,
        multiplicity=multiplicity,
        where=tuple((where or {}).items()),
        title=f"Reliability — {dataset}, DP {_setting(epsilon, multiplicity, where)}",
        caption=(
            "Reliability diagram on the test split: bars = accuracy per equal-width confidence bin, dots = "
            "(mean confidence, accuracy) per bin, dashed = perfect calibration; bottom: share of test samples "
            "per bin. Bins pooled over all seeds with recorded bins (count-weighted, i.e. all seeds' test "
            "predictions binned together); ECE and Brier are the mean over seeds of each seed's test value."
        ),
    )


def write_figures(study: Study, results: dict[str, CellResult], out_dir: Path) -> list[FigureFile]:
    """Figure 1, GWA curves and a reliability diagram per DP setting; returns what was written."""
    out_dir = Path(out_dir)
    figures = []
    for dataset, eps, k in dp_settings(study):
        for where in figure_subsets(study, keep=(SIZE_AXIS,)):
            figures.append(
                draw_figure1(
                    study,
                    results,
                    dataset,
                    eps,
                    k,
                    out_dir / f"{_stem('figure1', dataset, eps, k, where)}.png",
                    where=where,
                )
            )
        for where in figure_subsets(study):
            for kind, draw in (("alignment", draw_alignment), ("reliability", draw_reliability)):
                drawn = draw(
                    study, results, dataset, eps, k, out_dir / f"{_stem(kind, dataset, eps, k, where)}.png", where=where
                )
                if drawn is not None:
                    figures.append(drawn)
    return figures
