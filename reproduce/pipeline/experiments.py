"""`dvc exp show`, readable: one row per experiment of one study, its summary metrics and the study
parameters that differ between the rows (``reproduce exp show``).

Why a wrapper and not DVC's own table: ``dvc exp show`` has a column for every tracked parameter of
every pipeline in the repository (each study's train stages track whole sections, model, privacy and
training, so that editing any field reruns the cells, and the report stage tracks the grid), one
for every dependency, and one per summary number of every study: about 145 columns, and DVC has no
setting that narrows its default columns (only per-call flags: ``--only-changed``, ``--keep``,
``--drop``). Tracking fewer parameters would make DVC miss edits that move numbers. So this module
reads ``dvc exp show --json`` and keeps what a researcher compares: the one study's summary.json
(DP and non-private accuracy and their gap per group, epsilon in the column label) and its changed
parameters.

Pure functions over DVC's JSON; ``show`` is the process edge.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from reproduce.errors import ReproduceError

# The metric shown unless asked otherwise: validation accuracy, the split experiments are compared on
# (picking a configuration by test accuracy would make the test numbers optimistic).
DEFAULT_METRIC = "val_acc"
ALL = "all"


def experiment_rows(shown: list[dict]) -> list[tuple[str, dict | None]]:
    """(label, data) per row of ``dvc exp show --json``: the workspace, each baseline commit (branch
    name or short sha), then its experiments indented under it; data is None for a row DVC could not
    collect (queued, failed)."""
    rows = []
    for baseline in shown:
        rev = baseline.get("rev", "")
        label = "workspace" if rev == "workspace" else (baseline.get("name") or rev[:7])
        rows.append((label, baseline.get("data")))
        for exp in baseline.get("experiments") or []:
            for state in exp.get("revs") or []:
                name = state.get("name") or exp.get("name") or state.get("rev", "")[:7]
                rows.append((f"  {name}", state.get("data")))
    return rows


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested params -> {"training.epochs": 2, ...}; lists stay values."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    out = {}
    for key, value in tree.items():
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def _file_data(data: dict | None, section: str, path: str) -> dict:
    """One file's numbers or params in a row ({} when the row or the file has none, e.g. not run)."""
    entry = ((data or {}).get(section) or {}).get(path) or {}
    return flatten(entry.get("data") or {})


def _split(key: str) -> tuple[str, str, str, str] | None:
    """ "embedded/C4/val_acc/DP eps=8, no aug" -> (dataset, group, metric, column); None if not so."""
    parts = key.split("/", 3)
    return (parts[0], parts[1], parts[2], parts[3]) if len(parts) == 4 else None


def _derived(column: str) -> bool:
    """A DP gap (non-DP minus DP) or a delta to the paper: computed from the other columns."""
    return column.startswith("DP gap") or column.endswith("/delta_vs_paper")


def _column_order(column: str) -> tuple:
    """Non-DP first, then DP by epsilon, each followed by its gap: the table's order, across experiments
    that ran different epsilons."""
    label = column.split("/")[0]
    eps = label.split("eps=")[1].split(",")[0] if "eps=" in label else ""
    try:
        eps_key = float(eps) if eps else -1.0
    except ValueError:
        eps_key = float("inf")
    return eps_key, _derived(column), column


def exp_table(
    shown: list[dict], *, study_file: str, summary_file: str, metric: str = DEFAULT_METRIC, derived: bool = False
) -> tuple[list[str], list[list[str]], str]:
    """(header, rows, note) of the readable table: Experiment, Created, the study's params that differ
    between rows, then the summary's numbers of ``metric`` (``"all"``: every metric) in percent, one
    column per group x table column (epsilon and augmentation); the DP gaps and paper deltas too with
    ``derived``. Headers drop what every column shares (one dataset, one metric, one augmentation),
    which ``note`` then says.

    Summary keys are "<dataset>/<group>/<metric>/<column>" (``reproduce.report.table.to_summary``).
    """
    rows = experiment_rows(shown)
    params = [_file_data(data, "params", study_file) for _, data in rows]
    numbers = [_file_data(data, "metrics", summary_file) for _, data in rows]
    parsed = {k: _split(k) for n in numbers for k in n}
    keys = [k for k, p in parsed.items() if p and (metric == ALL or p[2] == metric) and (derived or not _derived(p[3]))]
    if not keys and any(numbers):
        found = sorted({p[2] for p in parsed.values() if p})
        raise ReproduceError(
            f"{summary_file} has no {metric!r} numbers; it has {', '.join(found)} (or use --metric {ALL})"
        )
    keys.sort(key=lambda k: (*parsed[k][:3], _column_order(parsed[k][3])))
    datasets, metrics_seen = {parsed[k][0] for k in keys}, {parsed[k][2] for k in keys}
    augs = {parsed[k][3].split("/")[0].rsplit(", ", 1)[-1] for k in keys}
    common_aug = augs.pop() if len(augs) == 1 else None

    def header(key: str) -> str:
        dataset, group, m, column = parsed[key]
        if common_aug:
            column = column.replace(f", {common_aug}", "")
        return " ".join(
            ([dataset] if len(datasets) > 1 else []) + [group] + ([m] if len(metrics_seen) > 1 else []) + [column]
        )

    param_keys = list(dict.fromkeys(k for p in params for k in p))
    changed = [k for k in param_keys if len({json.dumps(p.get(k), sort_keys=True) for p in params}) > 1]
    table = []
    for (label, data), p, n in zip(rows, params, numbers):
        created = (data or {}).get("timestamp") or "-"
        table.append(
            [
                label,
                created.replace("T", " ")[:16],
                *(_value(p.get(k)) for k in changed),
                *(_percent(n.get(k)) for k in keys),
            ]
        )
    shared = (
        ([f"dataset {next(iter(datasets))}"] if len(datasets) == 1 else [])
        + ([f"{next(iter(metrics_seen))} (%)"] if len(metrics_seen) == 1 else ["%"])
        + ([common_aug] if common_aug else [])
    )
    note = f"{summary_file}: {', '.join(shared)}; params of {study_file} that differ between rows"
    return ["Experiment", "Created", *changed, *map(header, keys)], table, note


def _value(v: Any) -> str:
    return "-" if v is None else json.dumps(v) if isinstance(v, (list, dict)) else str(v)


def _percent(v: Any) -> str:
    return f"{100 * v:.2f}" if isinstance(v, (int, float)) and not isinstance(v, bool) else "-"


def render(header: list[str], rows: list[list[str]], *, markdown: bool = False) -> str:
    """Aligned plain text (numbers right-aligned), or a GitHub Markdown table."""
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows]) + "\n"
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    left = {0, 1}  # labels and dates read left to right; numbers and params line up on the right

    def line(cells):
        return "  ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([line(header), "  ".join("-" * w for w in widths), *map(line, rows)]) + "\n"


def dvc_exp_show_json(dvc_args: list[str]) -> list[dict]:
    """``dvc exp show --json`` of the current repository (ReproduceError with DVC's message on failure)."""
    cmd = [sys.executable, "-m", "dvc", "exp", "show", "--json", *dvc_args]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ReproduceError(f"`dvc exp show --json {' '.join(dvc_args)}` failed: {proc.stderr.strip()}")
    return json.loads(proc.stdout or "[]")
