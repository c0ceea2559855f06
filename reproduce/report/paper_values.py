"""Published numbers to compare a study with (``published/*.yaml``), matched cell by cell.

A published table is looked up per (dataset, group, private, augmented); a DP entry only matches a
cell trained at the paper's epsilon and delta (a number at another privacy level is not comparable).
``augmented`` means augmentation multiplicity > 1. Bridging the Gap's Table 1 reports VALIDATION
accuracy, so its numbers are compared with our ``val_acc`` (``compare.metric`` in the YAML).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from pathlib import Path

import yaml

from reproduce.study import NON_PRIVATE, Study

PUBLISHED_DIR = Path(__file__).resolve().parent / "published"


@dataclasses.dataclass(frozen=True)
class PublishedTable:
    key: str  # file stem, e.g. "bridging_the_gap"
    citation: str
    url: str | None
    metric: str  # our metric the paper's numbers correspond to (e.g. "val_acc")
    scale: float  # paper value = scale * our value (100: percent)
    epsilon: float
    delta: float
    widths: tuple[int, ...] | None
    values: dict  # (dataset, group, private, augmented) -> paper value (paper units)
    claims: tuple[str, ...] = ()

    def lookup(
        self, dataset: str, group: str, epsilon, multiplicity: int, *, delta: float | None = None
    ) -> float | None:
        """The paper's number for a cell, or None where the paper has none comparable."""
        private = epsilon != NON_PRIVATE
        if private:
            if not math.isclose(float(epsilon), self.epsilon, rel_tol=0, abs_tol=1e-9):
                return None
            if delta is not None and not math.isclose(float(delta), self.delta, rel_tol=1e-9):
                return None
        return self.values.get((dataset, group, private, multiplicity > 1))

    def caveats(self, study: Study) -> list[str]:
        """Ways the study's setting differs from the paper's (shown next to the comparison)."""
        out = []
        if self.widths is not None:
            differ = sorted({g for g in study.grid.group if tuple(study.model.widths_for(g)) != self.widths})
            if differ:
                out.append(
                    f"model widths of {', '.join(differ)} differ from the paper's "
                    f"{'-'.join(map(str, self.widths))} layout"
                )
        dp_eps = [e for e in study.grid.epsilon if e != NON_PRIVATE]
        other = [e for e in dp_eps if not math.isclose(float(e), self.epsilon, rel_tol=0, abs_tol=1e-9)]
        if other:
            out.append(
                f"DP columns at epsilon {', '.join(f'{float(e):g}' for e in other)} have no published "
                f"counterpart (paper: epsilon {self.epsilon:g})"
            )
        if dp_eps and not math.isclose(study.privacy.delta, self.delta, rel_tol=1e-9):
            out.append(
                f"delta {study.privacy.delta:g} differs from the paper's {self.delta:g}: DP columns not compared"
            )
        return out


def _parse(path: Path) -> PublishedTable:
    doc = yaml.safe_load(path.read_text())
    groups = list(doc["groups"])
    values = {}
    for dataset, blocks in doc["table1"].items():
        for aug_key, augmented in (("no_aug", False), ("aug", True)):
            for priv_key, private in (("non_dp", False), ("dp", True)):
                row = blocks[aug_key][priv_key]
                if len(row) != len(groups):
                    raise ValueError(
                        f"{path}: {dataset}.{aug_key}.{priv_key} has {len(row)} values for {len(groups)} groups"
                    )
                for group, value in zip(groups, row):
                    values[(dataset, group, private, augmented)] = float(value)
    compare = doc.get("compare", {})
    return PublishedTable(
        key=path.stem,
        citation=" ".join(str(doc["citation"]).split()),
        url=doc.get("url"),
        metric=compare.get("metric", "val_acc"),
        scale=float(compare.get("scale", 100)),
        epsilon=float(doc["privacy"]["epsilon"]),
        delta=float(doc["privacy"]["delta"]),
        widths=tuple(doc["widths"]) if doc.get("widths") else None,
        values=values,
        claims=tuple(doc.get("claims", ())),
    )


@functools.cache
def load_published(key: str = "bridging_the_gap") -> PublishedTable:
    return _parse(PUBLISHED_DIR / f"{key}.yaml")


def published_tables() -> list[PublishedTable]:
    return [load_published(p.stem) for p in sorted(PUBLISHED_DIR.glob("*.yaml"))]


def published_for(study: Study) -> PublishedTable | None:
    """The published table with the most cells comparable to the study's (None if no cell matches)."""
    best, best_n = None, 0
    for table in published_tables():
        n = sum(
            table.lookup(c.dataset, c.group, c.epsilon, c.multiplicity, delta=study.privacy.delta) is not None
            for c in study.cells()
        )
        if n > best_n:
            best, best_n = table, n
    return best
