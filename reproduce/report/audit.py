"""The privacy audit beside the accountant's epsilon: table.md/.csv/.tex/summary.json sections and a figure.

For a study with an ``audit`` section, one row per cell setting (seeds pooled: ``grouping.seed_groups``)
gives the accountant's epsilon (the upper bound the run claims) and the audit's measured lower bound
(Steinke, Nasr & Jagielski 2023), mean ± sample std over seeds, and the most m canaries can show.
A violation is judged per cell (``reproduce.checks.audit``: the cell's bound above the cell's own
accountant epsilon) and shown loudly; a mean would hide one bad seed. Studies without an audit
section get nothing here, so their tables stay as they were.

Pure aggregation and text renderings; ``draw_audit`` is the figure (lower bound over accountant
epsilon per cell, the diagonal the accountant's claim).
"""

from __future__ import annotations

import csv
import dataclasses
import io
from pathlib import Path

from reproduce.checks.audit import AuditVerdict, audit_verdicts
from reproduce.records.result import CellResult
from reproduce.report.grouping import axes_path, seed_groups, setting_label
from reproduce.report.table import Summary, axis_value_label, column_label, summarise, tex_escape
from reproduce.study import NON_PRIVATE, Study

VIOLATION = "VIOLATION"


@dataclasses.dataclass(frozen=True)
class AuditRow:
    """One cell setting's audit, seeds pooled; ``verdicts`` per cell (seed), in seed order."""

    dataset: str
    group: str
    epsilon: float | int | str  # the grid's target epsilon (or "non-private")
    multiplicity: int
    axes: tuple  # the dotted grid axes' values (Cell.axes)
    verdicts: tuple[AuditVerdict, ...]
    widths: tuple[int, ...]
    parameters: int | None

    @property
    def n(self) -> int:
        return len(self.verdicts)

    @property
    def accountant(self) -> Summary:
        """``table.summarise`` of the accountant's epsilon over seeds (mean None: non-private)."""
        return summarise([v.epsilon for v in self.verdicts])

    @property
    def bound(self) -> Summary:
        """``table.summarise`` of the audit's lower bound over seeds."""
        return summarise([v.record.epsilon_lower for v in self.verdicts])

    @property
    def bound_max(self) -> float:
        """The most these canaries can show (every guess right)."""
        return max(v.record.epsilon_lower_max for v in self.verdicts)

    @property
    def violations(self) -> tuple[str, ...]:
        """The cells (seeds) whose bound exceeds their own accountant's epsilon."""
        return tuple(v.cell for v in self.verdicts if v.violated)

    @property
    def canaries(self) -> str:
        """How the audit was made, e.g. ``input (mislabeled), m=1000``."""
        kinds = dict.fromkeys(f"{v.record.kind} ({v.record.canary}), m={v.record.canaries}" for v in self.verdicts)
        return "; ".join(kinds)


def audit_rows(study: Study, results: dict[str, CellResult]) -> list[AuditRow]:
    """One row per cell setting with audited results, in grid order; [] for a study without an audit."""
    if study.audit is None:
        return []
    rows = []
    for (dataset, group, eps, k, axes), cells in seed_groups(study, results):
        verdicts = audit_verdicts([c.id for c in cells], results)
        if not verdicts:
            continue
        params = next(
            (results[c.id].metric("parameters") for c in cells if results[c.id].metric("parameters") is not None), None
        )
        rows.append(
            AuditRow(
                dataset,
                group,
                eps,
                k,
                axes,
                tuple(verdicts),
                tuple(cells[0].widths),
                None if params is None else int(params),
            )
        )
    return rows


# ---------------------------------------------------------------- text renderings


def fmt_epsilon(s: Summary) -> str:
    if s.mean is None:
        return "n/a"
    return f"{s.mean:.3f}" + (f" ± {s.std:.3f}" if s.n > 1 else "")


def verdict_text(row: AuditRow) -> str:
    if row.violations:
        return f"{VIOLATION} ({', '.join(row.violations)})"
    return "no claim (non-private control)" if row.epsilon == NON_PRIVATE else "consistent"


def violation_lines(rows: list[AuditRow]) -> list[str]:
    """The loud statement of every violation ([] without any)."""
    bad = [v for r in rows for v in r.verdicts if v.violated]
    if not bad:
        return []
    return [
        f"**{VIOLATION}**: in {len(bad)} audited cell(s) the measured epsilon lower bound exceeds the "
        "accountant's epsilon, so the implementation breaks its privacy guarantee (a sample not clipped, "
        "noise not added, or a sample rate other than the accounted one); their epsilons must not be "
        "published: "
        + "; ".join(f"{v.cell} (bound {v.record.epsilon_lower:.3f} > epsilon {v.epsilon:.3f})" for v in bad)
        + "."
    ]


def caption(study: Study) -> str:
    a = study.audit
    return (
        f"One-run privacy audit (Steinke, Nasr & Jagielski, NeurIPS 2023): {a.canaries} canaries per cell, each "
        "in the training set with probability 1/2; the measured epsilon lower bound at "
        f"{a.confidence:g} confidence (delta {study.privacy.delta:g}) beside the accountant's epsilon, the upper "
        "bound the run claims; mean ± sample std over seeds. A lower bound above the accountant's epsilon is a "
        f"{VIOLATION}: the run did not do what its privacy proof assumes. A small bound is no evidence of a "
        "loose accountant: 'most m can show' is the bound had every guess been right."
    )


def to_markdown(study: Study, rows: list[AuditRow]) -> str:
    """table.md's privacy-audit section; empty without rows."""
    if not rows:
        return ""
    lines = ["## Privacy audit: measured lower bound vs the accountant's epsilon", "", caption(study), ""]
    loud = violation_lines(rows)
    if loud:
        lines += [*loud, ""]
    lines += [
        "| dataset | group | setting | canaries | n | accountant ε | audit ε lower bound | most m can show "
        "| right guesses | verdict |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        guesses = ", ".join(f"{v.record.correct}/{v.record.guesses}" for v in r.verdicts)
        verdict = verdict_text(r)
        lines.append(
            f"| {r.dataset} | {r.group} | {setting_label(r.epsilon, r.multiplicity, r.axes)} | {r.canaries} "
            f"| {r.n} | {fmt_epsilon(r.accountant)} | {fmt_epsilon(r.bound)} | {r.bound_max:.3f} | {guesses} "
            f"| {f'**{verdict}**' if r.violations else verdict} |"
        )
    return "\n".join(lines) + "\n"


def csv_rows(rows: list[AuditRow], axes: list[str]) -> str:
    """Rows for table.csv (its header, kind "audit"): the accountant's epsilon, the lower bound and the
    number of violating seeds per setting, under ``column`` = Table 1's column label."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    for r in rows:
        widths = "-".join(map(str, r.widths))
        shown = [axis_value_label(dict(r.axes)[a]) if a in dict(r.axes) else "" for a in axes]
        label = column_label(r.epsilon, r.multiplicity)
        for metric, s in (
            ("epsilon", r.accountant),
            ("audit_epsilon_lower", r.bound),
            ("audit_violations", Summary(mean=float(len(r.violations)), std=None, n=r.n)),
        ):
            if s.mean is None:
                continue
            w.writerow(
                [
                    r.dataset,
                    r.group,
                    r.parameters,
                    label,
                    metric,
                    f"{s.mean:.6f}",
                    "" if s.std is None else f"{s.std:.6f}",
                    s.n,
                    "audit",
                    r.epsilon,
                    r.multiplicity,
                    widths,
                    "",
                    "",
                    "",
                    *shown,
                ]
            )
    return buf.getvalue()


def summary_entries(rows: list[AuditRow]) -> dict[str, float]:
    """``<dataset>/<group>/<axes>{audit_epsilon_lower,epsilon,audit_violations}/<setting>`` for summary.json."""
    out = {}
    for r in rows:
        base, setting = f"{r.dataset}/{r.group}/{axes_path(r.axes)}", setting_label(r.epsilon, r.multiplicity)
        out[f"{base}audit_epsilon_lower/{setting}"] = round(r.bound.mean, 6)
        if r.accountant.mean is not None:
            out[f"{base}epsilon/{setting}"] = round(r.accountant.mean, 6)
        out[f"{base}audit_violations/{setting}"] = len(r.violations)
    return out


def to_latex(study: Study, rows: list[AuditRow]) -> str:
    """The audit as one more booktabs table for table.tex; empty without rows."""
    if not rows:
        return ""
    cap = tex_escape(caption(study)).replace("±", r"$\pm$")
    out = [
        "",
        r"\begin{table}[t]",
        r"\centering",
        r"\small",
        rf"\caption{{{cap}}}",
        rf"\label{{tab:{study.name}-audit}}",
        r"\begin{tabular}{lllrrrrl}",
        r"\toprule",
        r"Dataset & Group & Setting & $n$ & accountant $\varepsilon$ & audit $\varepsilon$ lower bound & max & verdict \\",
        r"\midrule",
    ]
    for r in rows:
        verdict = rf"\textbf{{{VIOLATION}}}" if r.violations else tex_escape(verdict_text(r))
        cells = [
            tex_escape(r.dataset),
            tex_escape(r.group),
            tex_escape(setting_label(r.epsilon, r.multiplicity, r.axes)),
            str(r.n),
            f"${fmt_epsilon(r.accountant)}$".replace("±", r"\pm").replace("$n/a$", "n/a"),
            f"${fmt_epsilon(r.bound)}$".replace("±", r"\pm"),
            f"${r.bound_max:.3f}$",
            verdict,
        ]
        out.append(" & ".join(cells) + r" \\")
    out += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------- figure

MARKERS = {"input": "o", "gradient": "s"}


def draw_audit(study: Study, rows: list[AuditRow], dataset: str, path: Path):
    """Lower bound over the accountant's epsilon, one point per audited cell (FigureFile); None without rows.

    x: the cell's accountant epsilon; non-private controls (no epsilon) at a separate position right of
    the DP cells, labelled "non-private". y: the measured lower bound. The diagonal y = x is the
    accountant's claim (a point above it is a violation); dashed: the most m canaries can show.
    """
    from reproduce.report.figures import FigureFile, _pyplot, _save, group_colour, group_name

    rows = [r for r in rows if r.dataset == dataset]
    if not rows:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.6, 4.4))
    groups = list(study.grid.group)
    claimed = [v.epsilon for r in rows for v in r.verdicts if v.epsilon is not None]
    top_eps = max(claimed, default=1.0)
    edge = 1.1 * top_eps  # the DP part of the x axis ends here
    control_x = 1.3 * top_eps  # where the non-private controls stand
    kinds = list(dict.fromkeys(v.record.kind for r in rows for v in r.verdicts))
    # The controls' x means nothing, so they are spread by group and kind to stay visible; DP points
    # stay at their accountant epsilon exactly (their place against the diagonal is the point).
    dodge = {
        (g, k): (i - (len(groups) * len(kinds) - 1) / 2) * 0.03 * top_eps
        for i, (g, k) in enumerate((g, k) for g in groups for k in kinds)
    }
    for r in rows:
        colour = group_colour(r.group, groups)
        for v in r.verdicts:
            x = control_x + dodge[(r.group, v.record.kind)] if v.epsilon is None else v.epsilon
            y = v.record.epsilon_lower
            ax.plot(
                [x],
                [y],
                marker=MARKERS.get(v.record.kind, "^"),
                linestyle="none",
                markersize=7,
                markerfacecolor=colour if v.epsilon is not None else "white",
                markeredgecolor=colour,
            )
            if v.violated:
                ax.annotate(
                    VIOLATION,
                    (x, y),
                    textcoords="offset points",
                    xytext=(6, -10),
                    fontsize=8,
                    color="#b00020",
                    fontweight="bold",
                )
    if claimed:
        ax.plot(
            [0, edge], [0, edge], color="#888888", linestyle="-", linewidth=1, label="the accountant's claim (y = x)"
        )
        ax.axvline(edge, color="#cccccc", linewidth=0.8)
    for m in sorted({r.bound_max for r in rows}):
        ax.axhline(m, color="#555555", linestyle="--", linewidth=1, label=f"most m canaries can show ({m:.2f})")
    ticks = sorted({float(r.epsilon) for r in rows if r.epsilon != NON_PRIVATE})
    if any(v.epsilon is None for r in rows for v in r.verdicts):
        ax.set_xticks(ticks + [control_x], [f"{t:g}" for t in ticks] + ["non-private"])
    ax.set_xlim(0, 1.45 * top_eps)
    highest = max(
        [
            edge if claimed else 0.0,
            *(r.bound_max for r in rows),
            *(v.record.epsilon_lower for r in rows for v in r.verdicts),
        ]
    )
    ax.set_ylim(0, 1.08 * highest)
    from matplotlib.lines import Line2D

    handles, _ = ax.get_legend_handles_labels()
    handles += [
        Line2D([], [], color=group_colour(g, groups), marker="o", linestyle="none", label=group_name(g))
        for g in dict.fromkeys(r.group for r in rows)
    ]
    handles += [
        Line2D(
            [],
            [],
            color="#555555",
            marker=MARKERS.get(k, "^"),
            markerfacecolor="white",
            linestyle="none",
            label=f"{k} canaries",
        )
        for k in kinds
    ]
    # Outside the axes: the upper left, above the diagonal, is where violations would be.
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0, fontsize=7)
    ax.set_xlabel(f"accountant's epsilon (delta {study.privacy.delta:g})")
    ax.set_ylabel(f"audit: epsilon lower bound ({study.audit.confidence:g} confidence)")
    ax.set_title(f"{dataset}: privacy audit, measured vs claimed epsilon")
    fig.subplots_adjust(left=0.09, right=0.72, bottom=0.12, top=0.92)
    _save(fig, path)
    return FigureFile(
        path=path,
        kind="audit",
        dataset=dataset,
        epsilon=0,
        multiplicity=study.grid.multiplicity[0],
        title=f"Privacy audit — {dataset}",
        caption=(
            "One point per audited cell: x = the accountant's epsilon (the upper bound the run "
            "claims; non-private controls, which claim none, at the right), y = the epsilon lower "
            f"bound measured from {study.audit.canaries} canaries (Steinke, Nasr & Jagielski 2023). "
            "Colour: group (filled: DP, hollow: non-private); marker: canary kind. The grey "
            "diagonal is the accountant's claim: a point above it is a VIOLATION, a run that did "
            "not do what its privacy proof assumes. Dashed: the most m canaries can show (every "
            "guess right), so a bound far below the diagonal says the audit is weak, not that "
            "the accountant is loose."
        ),
    )
