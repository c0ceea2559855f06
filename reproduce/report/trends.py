"""Accuracy over epsilon and over training compute: the follow-up paper's headline figures.

"An increase of up to 9% in accuracy while reducing the computation time by more than 85%" is a
claim about two curves, drawn here from the cells' results:

- accuracy over epsilon (studies with two or more DP epsilons): test accuracy per group, mean and
  sample std over seeds, one line per group and multiplicity; the group's non-private mean as a
  dotted line; published anchors (``anchors/dp_accuracy.yaml``, e.g. CIFAR-10 at epsilon 8) as stars;
- accuracy over training compute: each (group, setting)'s mean test accuracy against its mean
  ``train_flops`` (``reproduce.metrics.compute``: a deterministic estimate; measured seconds are in
  each cell's ``run.json`` and are not versioned because they change on every rerun).

``compute_rows`` also gives table.md its compute section (parameters, estimated training FLOPs,
test accuracy per group and setting). Pure aggregation here; drawing is small.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import statistics
from pathlib import Path

import yaml

from reproduce.report.grouping import axes_label, axes_path, seed_groups, setting_label
from reproduce.study import NON_PRIVATE, Study

ANCHORS = Path(__file__).resolve().parent / "anchors" / "dp_accuracy.yaml"


@dataclasses.dataclass(frozen=True)
class Anchor:
    label: str
    epsilon: float
    delta: float
    test_acc: float  # percent
    parameters: int | None = None


@functools.cache
def anchors() -> dict[str, tuple[Anchor, ...]]:
    doc = yaml.safe_load(ANCHORS.read_text())
    return {d: tuple(Anchor(**a) for a in items) for d, items in doc.items()}


def anchors_for(study: Study, dataset: str) -> tuple[Anchor, ...]:
    """Anchors of ``dataset`` at the study's delta (another delta is not comparable)."""
    return tuple(a for a in anchors().get(dataset, ()) if math.isclose(a.delta, study.privacy.delta, rel_tol=1e-9))


@dataclasses.dataclass(frozen=True)
class TrendRow:
    dataset: str
    group: str
    epsilon: float | int | str
    multiplicity: int
    n: int
    test_acc: float | None
    test_acc_std: float | None
    parameters: int | None
    train_flops: float | None
    axes: tuple = ()  # the dotted grid axes' values (Cell.axes)


def _mean(vals):
    return statistics.fmean(vals) if vals else None


def compute_rows(study: Study, results: dict) -> list[TrendRow]:
    """One row per cell setting with results (seeds pooled: ``grouping.seed_groups``); means (pure)."""
    rows = []
    for (dataset, group, eps, k, axes), cells in seed_groups(study, results):
        recs = [results[c.id] for c in cells]
        acc = [r.metric("test_acc") for r in recs if r.metric("test_acc") is not None]
        flops = [r.metric("train_flops") for r in recs if r.metric("train_flops") is not None]
        params = [r.metric("parameters") for r in recs if r.metric("parameters") is not None]
        rows.append(
            TrendRow(
                dataset,
                group,
                eps,
                k,
                len(recs),
                _mean(acc),
                statistics.stdev(acc) if len(acc) > 1 else None,
                int(params[0]) if params else None,
                _mean(flops),
                axes,
            )
        )
    return rows


def to_markdown(rows: list[TrendRow]) -> str:
    """table.md's compute section; empty without rows."""
    if not rows:
        return ""
    lines = [
        "## Accuracy and training compute",
        "",
        "Test accuracy (%, mean ± std over n seeds) beside the estimated training compute: 6 x the "
        "multiply-adds of one forward pass x steps x batch size x multiplicity (reproduce/metrics/compute.py; "
        "the measured seconds are in each cell's run.json).",
        "",
        "| dataset | group | setting | n | parameters | train PFLOP (est.) | test acc |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        acc = (
            "n/a"
            if r.test_acc is None
            else f"{100 * r.test_acc:.2f}" + ("" if r.test_acc_std is None else f" ± {100 * r.test_acc_std:.2f}")
        )
        flops = "n/a" if r.train_flops is None else f"{r.train_flops / 1e15:.4g}"
        params = "n/a" if r.parameters is None else f"{r.parameters:,}"
        lines.append(
            f"| {r.dataset} | {r.group} | {setting_label(r.epsilon, r.multiplicity, r.axes)} | {r.n} | {params} | {flops} | {acc} |"
        )
    return "\n".join(lines) + "\n"


def summary_entries(rows: list[TrendRow]) -> dict[str, float]:
    """``<dataset>/<group>/train_pflop/<setting>`` -> estimated PFLOP, for summary.json."""
    return {
        f"{r.dataset}/{r.group}/{axes_path(r.axes)}train_pflop/{setting_label(r.epsilon, r.multiplicity)}": round(
            r.train_flops / 1e15, 9
        )
        for r in rows
        if r.train_flops is not None
    }


def draw_over_epsilon(study: Study, rows: list[TrendRow], dataset: str, path: Path):
    """Test accuracy over epsilon per group (FigureFile), or None with fewer than two DP epsilons."""
    from reproduce.report.figures import FigureFile, _pyplot, _save, group_colour, group_name

    dp_eps = sorted({float(r.epsilon) for r in rows if r.dataset == dataset and r.epsilon != NON_PRIVATE})
    if len(dp_eps) < 2:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    groups = list(study.grid.group)
    combos = list(dict.fromkeys(r.axes for r in rows if r.dataset == dataset and r.epsilon != NON_PRIVATE))
    for group in groups:
        for k in study.grid.multiplicity:
            for axes in combos:  # one line per setting of the dotted grid axes (none: one line)
                pts = sorted(
                    (float(r.epsilon), r)
                    for r in rows
                    if (r.dataset, r.group, r.multiplicity, r.axes) == (dataset, group, k, axes)
                    and r.epsilon != NON_PRIVATE
                    and r.test_acc is not None
                )
                if not pts:
                    continue
                style = "-" if k == study.grid.multiplicity[0] else "--"
                label = group_name(group) + ("" if len(study.grid.multiplicity) == 1 else f", K={k}")
                ax.errorbar(
                    [e for e, _ in pts],
                    [100 * r.test_acc for _, r in pts],
                    yerr=[100 * (r.test_acc_std or 0) for _, r in pts],
                    color=group_colour(group, groups),
                    marker="o",
                    capsize=3,
                    linestyle=style,
                    label=label + (f", {axes_label(axes)}" if axes else ""),
                )
            ref = [
                r
                for r in rows
                if (r.dataset, r.group, r.multiplicity, r.epsilon) == (dataset, group, k, NON_PRIVATE)
                and r.test_acc is not None
            ]
            if ref:
                ax.axhline(100 * ref[0].test_acc, color=group_colour(group, groups), linestyle=":", linewidth=1)
    for a in anchors_for(study, dataset):
        ax.plot([a.epsilon], [a.test_acc], marker="*", markersize=11, linestyle="none", color="#444444")
        ax.annotate(
            a.label, (a.epsilon, a.test_acc), textcoords="offset points", xytext=(-6, 6), ha="right", fontsize=7
        )
    ax.set_xlabel(f"target epsilon (delta {study.privacy.delta:g})")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{dataset}: accuracy over epsilon")
    ax.legend(loc="lower right")
    fig.tight_layout()
    _save(fig, path)
    return FigureFile(
        path=path,
        kind="trends",
        dataset=dataset,
        epsilon=dp_eps[-1],
        multiplicity=study.grid.multiplicity[0],
        title=f"Accuracy over epsilon — {dataset}",
        caption=(
            "Test accuracy (%) per group, mean ± sample std over seeds, at each target epsilon; "
            "dotted: the group's non-private mean; stars: published results at the same delta "
            "(reproduce/report/anchors/dp_accuracy.yaml)."
        ),
    )


def draw_over_compute(study: Study, rows: list[TrendRow], dataset: str, path: Path):
    """Mean test accuracy over estimated training compute per (group, setting); None without compute."""
    from reproduce.report.figures import FigureFile, _pyplot, _save, group_colour, group_name

    pts = [r for r in rows if r.dataset == dataset and r.test_acc is not None and r.train_flops]
    if not pts:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    groups = list(study.grid.group)
    labelled = set()
    for r in pts:
        colour = group_colour(r.group, groups)
        private = r.epsilon != NON_PRIVATE
        ax.plot(
            [r.train_flops / 1e15],
            [100 * r.test_acc],
            marker="o",
            linestyle="none",
            markersize=7,
            markerfacecolor=colour if private else "white",
            markeredgecolor=colour,
            label=None if r.group in labelled else group_name(r.group),
        )
        labelled.add(r.group)
        ax.annotate(
            "non-DP" if not private else f"ε={r.epsilon}",
            (r.train_flops / 1e15, 100 * r.test_acc),
            textcoords="offset points",
            xytext=(5, 3),
            fontsize=7,
            color=colour,
        )
    xs = [r.train_flops for r in pts]
    if max(xs) / min(xs) > 10:
        ax.set_xscale("log")
    ax.set_xlabel("training compute, PFLOP (estimate: 6 x forward multiply-adds x samples seen)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{dataset}: accuracy over training compute")
    ax.legend(loc="lower right")
    fig.tight_layout()
    _save(fig, path)
    return FigureFile(
        path=path,
        kind="trends",
        dataset=dataset,
        epsilon=0,
        multiplicity=study.grid.multiplicity[0],
        title=f"Accuracy over training compute — {dataset}",
        caption=(
            "Mean test accuracy (%) over seeds against the estimated training compute of each group "
            "and setting (filled: DP, hollow: non-private). The estimate counts convolutions and "
            "linear layers only (reproduce/metrics/compute.py); measured times are in each cell's "
            "run.json, not versioned."
        ),
    )
