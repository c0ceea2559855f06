"""Result check (issue 9): does non-private C4 beat the conventional model of similar size on rotated test sets?

Reads a study's cell results (default: results/default, produced by `dvc repro`) and prints, per
group and privacy setting, test accuracy on the original, 90-degree and 45-degree rotated test sets
(mean over seeds), then the C4 - e differences. Prints; asserts nothing.

    python bench/rotated_accuracy.py [studies/default.yaml]
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from reproduce.study import load_study

METRICS = ("parameters", "test_acc", "test_acc_rot90", "test_acc_rot45")


def main(study_path: str = "studies/default.yaml") -> None:
    study = load_study(study_path)
    rows: dict[tuple, dict[str, list[float]]] = {}
    for cell in study.cells():
        path = Path("results") / study.name / "cells" / cell.id / "result.json"
        if not path.exists():
            sys.exit(f"missing {path}: run `dvc repro` first")
        m = json.loads(path.read_text())["metrics"]
        row = rows.setdefault((cell.group, str(cell.epsilon)), {k: [] for k in METRICS})
        for k in METRICS:
            row[k].append(float(m[k]))
    print(
        f"{'group':6} {'epsilon':12} {'params':>8} {'test':>7} {'rot90':>7} {'rot45':>7}   (% test accuracy, mean over seeds {study.grid.seed})"
    )
    means = {}
    for (group, eps), row in rows.items():
        means[group, eps] = {k: statistics.fmean(v) for k, v in row.items()}
        r = means[group, eps]
        print(
            f"{group:6} {eps:12} {int(r['parameters']):>8,} {100 * r['test_acc']:7.2f} {100 * r['test_acc_rot90']:7.2f} {100 * r['test_acc_rot45']:7.2f}"
        )
    for eps in dict.fromkeys(e for _, e in rows):
        if ("C4", eps) in means and ("e", eps) in means:
            d = {k: 100 * (means["C4", eps][k] - means["e", eps][k]) for k in METRICS[1:]}
            verdict = "C4 better on every test set" if min(d.values()) > 0 else "C4 NOT better everywhere"
            print(
                f"C4 - e at {eps}: test {d['test_acc']:+.2f}, rot90 {d['test_acc_rot90']:+.2f}, "
                f"rot45 {d['test_acc_rot45']:+.2f} points -> {verdict}"
            )


if __name__ == "__main__":
    main(*sys.argv[1:])
