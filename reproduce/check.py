"""Result regression checks: current cell metrics vs a committed baseline, with declared tolerances.

DVC's ``metrics diff`` has no tolerances; this is the layer on top. Pure functions compare; the CLI
reads ``results/<study>/cells/*/result.json`` and ``baselines/<study>.json``.

A metric passes when |now - baseline| <= max(abs, std * seed_std), where seed_std is the baseline's
standard deviation of that metric over the seeds of the cell's row (same dataset, group, epsilon,
multiplicity). Metrics without a declared tolerance are not checked.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from pathlib import Path

from reproduce.study import Study
from reproduce.training.result import read_result


@dataclasses.dataclass(frozen=True)
class Verdict:
    cell: str
    metric: str
    baseline: float | None
    now: float | None
    tolerance: float | None
    ok: bool
    reason: str = ""

    @property
    def delta(self) -> float | None:
        return None if self.baseline is None or self.now is None else self.now - self.baseline


def _row(cell_id: str) -> str:
    return cell_id.rsplit("-", 1)[0]   # the id without its seed


def seed_stds(baseline: dict[str, dict[str, float]]) -> dict[tuple[str, str], float]:
    """Std over seeds of each metric, per row (cell id without the seed)."""
    rows: dict[tuple[str, str], list[float]] = {}
    for cell, metrics in baseline.items():
        for m, v in metrics.items():
            rows.setdefault((_row(cell), m), []).append(v)
    return {k: statistics.stdev(v) if len(v) > 1 else 0.0 for k, v in rows.items()}


def compare(study: Study, baseline: dict[str, dict[str, float]], now: dict[str, dict[str, float]]) -> list[Verdict]:
    """One verdict per (cell, checked metric), plus one per missing or extra cell."""
    tolerances = study.checks.tolerances
    stds = seed_stds(baseline)
    out = []
    expected = [c.id for c in study.cells()]
    for cell in expected:
        if cell not in baseline:
            out.append(Verdict(cell, "*", None, None, None, False, "cell not in baseline (run `reproduce check --update`)"))
            continue
        if cell not in now:
            out.append(Verdict(cell, "*", None, None, None, False, "missing cell: no current result"))
            continue
        for metric, tol in tolerances.items():
            b, n = baseline[cell].get(metric), now[cell].get(metric)
            if b is None and n is None:
                continue   # not applicable to this cell (e.g. epsilon of a non-private cell)
            if b is None or n is None:
                out.append(Verdict(cell, metric, b, n, None, False, "metric missing"))
                continue
            allowed = max(tol.abs, tol.std * stds.get((_row(cell), metric), 0.0))
            out.append(Verdict(cell, metric, b, n, allowed, abs(n - b) <= allowed))
    for cell in sorted(set(baseline) - set(expected)):
        out.append(Verdict(cell, "*", None, None, None, False, "extra cell in baseline, not in the study"))
    return out


def render(verdicts: list[Verdict]) -> str:
    head = f"{'cell':36} {'metric':14} {'baseline':>10} {'now':>10} {'delta':>10} {'tolerance':>10}  verdict"
    lines = [head, "-" * len(head)]
    fmt = lambda v: "" if v is None else f"{v:10.5g}"  # noqa: E731
    for v in verdicts:
        verdict = "ok" if v.ok else f"FAIL {v.reason}".rstrip()
        lines.append(f"{v.cell:36} {v.metric:14} {fmt(v.baseline):>10} {fmt(v.now):>10} {fmt(v.delta):>10} "
                     f"{fmt(v.tolerance):>10}  {verdict}")
    bad = sum(not v.ok for v in verdicts)
    lines.append(f"{len(verdicts) - bad} ok, {bad} failed")
    return "\n".join(lines)


def current_metrics(study: Study, results_dir: Path) -> dict[str, dict[str, float]]:
    """The checked metrics of every cell of ``study`` with a result in ``results_dir``."""
    out = {}
    for cell in study.cells():
        path = results_dir / "cells" / cell.id / "result.json"
        if path.exists():
            metrics = read_result(path).metrics
            out[cell.id] = {k: v for k, v in metrics.items() if k in study.checks.tolerances}
    return out


def baseline_path(study: Study, root: Path = Path(".")) -> Path:
    return root / "baselines" / f"{study.name}.json"


def update_baseline(study: Study, now: dict[str, dict[str, float]], path: Path) -> str:
    """Rewrite the baseline deliberately; returns what changed, cell by cell."""
    old = json.loads(path.read_text()) if path.exists() else {}
    changes = []
    for cell in sorted(set(old) | set(now)):
        if old.get(cell) != now.get(cell):
            changes.append(f"  {cell}: {old.get(cell)} -> {now.get(cell)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(now, indent=2, sort_keys=True) + "\n")
    return "\n".join(changes) if changes else "  (no change)"
