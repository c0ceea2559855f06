"""Where the models look, in the report: Figure 2's panel and the co-location / FIR scores table.

Reads only the attribution stage's files (``results/<study>/attribution/``, see
``reproduce.attribution.stage``). The MedMNIST paper's Figure 2 shows Guided Backprop and Grad-CAM of
the final layer for the conventional and an equivariant model; here, per dataset (first
multiplicity, first seed):

- rows: the first ``SHOWN`` selected test images (one per class, classes in order);
- columns: the input, then Grad-CAM and Guided Backprop for the conventional model (``e``) and for
  the best equivariant group (highest mean DP test accuracy over seeds at the largest epsilon), each
  non-private (when the grid has it) and DP at the largest epsilon.

Scores (means over the selection, then over seeds), per dataset, group and privacy setting:
``colocation`` = Spearman rank correlation of the final layer's response map with the Grad-CAM map,
``top_k`` = top-10% overlap of the two; on the embedded data ``object_share`` = share of Grad-CAM
(and guided) magnitude inside the object, beside ``object_area`` (what a uniform map gets); ``fir``
= mean expanded-kernel norm over every convolution's output channels.
"""

from __future__ import annotations

import dataclasses
import statistics
from pathlib import Path

import numpy as np

from reproduce.attribution.files import read_maps
from reproduce.report.grouping import axes_path, seed_groups, setting_label
from reproduce.study import NON_PRIVATE, Study

SHOWN = 4
# column name -> key in scores.json (absent keys are left out: object shares exist on the embedded data only)
SCORES = {
    "colocation": "rank_correlation/gradcam",
    "top_k": "top_k_overlap/gradcam",
    "object_share (Grad-CAM)": "object_share/gradcam",
    "object_share (guided)": "object_share/guided",
    "object_area": "object_area",
    "fir": "fir/mean",
}


@dataclasses.dataclass(frozen=True)
class ScoreRow:
    dataset: str
    group: str
    setting: str  # "non-DP" or "DP eps=<e>", with the augmentation multiplicity
    epsilon: float | int | str
    multiplicity: int
    n: int  # seeds with scores
    values: dict[str, float | None]
    axes: tuple = ()  # the dotted grid axes' values (Cell.axes)


def score_rows(study: Study, scores: dict[str, dict]) -> list[ScoreRow]:
    """One row per cell setting with scores (seeds pooled: ``grouping.seed_groups``); means (pure)."""
    rows = []
    for (dataset, group, eps, k, axes), cells in seed_groups(study, scores):
        values = {}
        for name, key in SCORES.items():
            vals = [scores[c.id][key] for c in cells if scores[c.id].get(key) is not None]
            if any(key in scores[c.id] for c in cells):
                values[name] = statistics.fmean(vals) if vals else None
        rows.append(ScoreRow(dataset, group, setting_label(eps, k, axes), eps, k, len(cells), values, axes))
    return rows


def summary_entries(rows: list[ScoreRow]) -> dict[str, float]:
    """``<dataset>/<group>/attribution/<score>/<setting>`` -> value, for summary.json."""
    out = {}
    for r in rows:
        for name, v in r.values.items():
            if v is not None:
                out[
                    f"{r.dataset}/{r.group}/{axes_path(r.axes)}attribution/{name}/{setting_label(r.epsilon, r.multiplicity)}"
                ] = round(v, 6)
    return out


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def to_markdown(rows: list[ScoreRow]) -> str:
    """The scores as a Markdown section (appended to table.md); empty without rows."""
    if not rows:
        return ""
    names = [n for n in SCORES if any(n in r.values for r in rows)]
    lines = [
        "## Where the models look (attribution of the final layer)",
        "",
        "Means over 4 seeded test images per class, then over seeds (n): colocation = rank correlation of "
        "the final layer's response with Grad-CAM, top_k = their top-10% overlap, object_share = share of "
        "the map inside the object (embedded data; object_area is a uniform map's share), fir = mean filter "
        "norm. See reports/<study>/ for Figure 2.",
        "",
        "| dataset | group | setting | n | " + " | ".join(names) + " |",
        "|---|---|---|---|" + "---|" * len(names),
    ]
    for r in rows:
        lines.append(
            f"| {r.dataset} | {r.group} | {r.setting} | {r.n} | "
            + " | ".join(_fmt(r.values.get(n)) for n in names)
            + " |"
        )
    return "\n".join(lines) + "\n"


def panel_columns(study: Study, results: dict, dataset: str, multiplicity: int) -> list[tuple[str, object]]:
    """(group, epsilon) of Figure 2's models: conventional and best equivariant, non-DP then DP (pure)."""
    dp = [e for e in study.grid.epsilon if e != NON_PRIVATE]
    largest = max(dp, key=float) if dp else None
    settings = ([NON_PRIVATE] if NON_PRIVATE in study.grid.epsilon else []) + ([largest] if dp else [])

    def mean_acc(group, eps):
        vals = [
            results[c.id].metric("test_acc")
            for c in study.cells()
            if (c.dataset, c.group, c.epsilon, c.multiplicity) == (dataset, group, eps, multiplicity)
            and c.id in results
            and results[c.id].metric("test_acc") is not None
        ]
        return statistics.fmean(vals) if vals else float("-inf")

    equivariant = [g for g in study.grid.group if g != "e"]
    ref = largest if dp else NON_PRIVATE
    best = max(equivariant, key=lambda g: mean_acc(g, ref)) if equivariant else None
    groups = [g for g in ("e" if "e" in study.grid.group else None, best) if g is not None]
    return [(g, e) for g in groups for e in settings]


def draw_figure2(study: Study, results: dict, results_dir: Path, dataset: str, path: Path):
    """Figure 2's panel for ``dataset`` (PNG); None when no shown model has attribution maps."""
    from reproduce.report.figures import FigureFile, _pyplot, _save, group_name

    k = study.grid.multiplicity[0]
    seed = study.grid.seed[0]
    columns = []
    for group, eps in panel_columns(study, results, dataset, k):
        cell = next(
            (
                c
                for c in study.cells()
                if (c.dataset, c.group, c.epsilon, c.multiplicity, c.seed) == (dataset, group, eps, k, seed)
            ),
            None,
        )
        maps = read_maps(results_dir, cell.id) if cell is not None else None
        if maps is not None:
            columns.append((group, eps, maps))
    if not columns:
        return None
    images = columns[0][2]["images"]
    targets = columns[0][2]["targets"]
    # one image per class: the first selected image of each of the first SHOWN classes
    first = [int(np.flatnonzero(targets == c)[0]) for c in sorted(set(targets.tolist()))][:SHOWN]
    plt = _pyplot()
    n_cols = 1 + 2 * len(columns)
    fig, axes = plt.subplots(len(first), n_cols, figsize=(1.3 * n_cols, 1.4 * len(first) + 0.6), squeeze=False)
    for row, i in enumerate(first):
        axes[row][0].imshow(images[i])
        axes[row][0].set_ylabel(f"class {int(targets[i])}", fontsize=7)
        for j, (_group, _eps, maps) in enumerate(columns):
            cam = maps["gradcam"][i]
            guided = np.abs(maps["guided"][i]).max(axis=0)
            axes[row][1 + 2 * j].imshow(cam, cmap="jet", vmin=0, vmax=max(float(cam.max()), 1e-12))
            axes[row][2 + 2 * j].imshow(guided, cmap="gray", vmin=0, vmax=max(float(guided.max()), 1e-12))
    titles = ["input"] + [
        f"{name}\n{group_name(g)}, {'non-DP' if e == NON_PRIVATE else f'DP ε={e}'}"
        for g, e, _ in columns
        for name in ("Grad-CAM", "guided BP")
    ]
    for j, t in enumerate(titles):
        axes[0][j].set_title(t, fontsize=6)
    for ax in axes.flat:
        ax.set_xticks([]), ax.set_yticks([]), ax.grid(False)
    fig.tight_layout()
    _save(fig, path)
    shown = ", ".join(f"{g} {'non-DP' if e == NON_PRIVATE else f'DP eps={e}'}" for g, e, _ in columns)
    return FigureFile(
        path=path,
        kind="figure2",
        dataset=dataset,
        epsilon=columns[-1][1],
        multiplicity=k,
        title=f"Figure 2 — {dataset}: where the models look",
        caption=(
            f"Rows: one seeded test image per class (seed {seed} models). Columns: the input, then "
            f"Grad-CAM of the final feature layer (jet) and guided backprop (max |.| over colour "
            f"channels) for {shown}; the equivariant group is the one with the best mean DP test "
            "accuracy. Each map is scaled to its own maximum."
        ),
    )
