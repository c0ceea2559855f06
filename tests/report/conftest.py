"""Fake cell results for the report tests: result.json files shaped like reproduce.training.cell writes them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reproduce.records.result import CellResult
from reproduce.study import parse_study

# bloodmnist has published numbers (Bridging the Gap, Table 1); embedded has none.
FAKE_STUDY = """\
name: fake
description: Fake results for the report tests.
model:
  widths: {e: [8, 16, 32], C4: [8, 16, 32]}
privacy: {delta: 1.0e-5}
training: {epochs: 1}
grid:
  dataset: [bloodmnist, embedded]
  group: [e, C4]
  epsilon: [non-private, 7.42]
  multiplicity: [1, 4]
  seed: [0, 1]
"""

# val_acc of seed 0 per (dataset, group, private, multiplicity); seed 1 = seed 0 + 0.02.
VAL0 = {
    ("bloodmnist", "e", False, 1): 0.90,
    ("bloodmnist", "C4", False, 1): 0.95,
    ("bloodmnist", "e", False, 4): 0.93,
    ("bloodmnist", "C4", False, 4): 0.92,
    ("bloodmnist", "e", True, 1): 0.80,
    ("bloodmnist", "C4", True, 1): 0.88,
    ("bloodmnist", "e", True, 4): 0.82,
    ("bloodmnist", "C4", True, 4): 0.90,
    ("embedded", "e", False, 1): 0.70,
    ("embedded", "C4", False, 1): 0.70,  # a tie: both bold
    ("embedded", "e", False, 4): 0.71,
    ("embedded", "C4", False, 4): 0.75,
    ("embedded", "e", True, 1): 0.60,
    ("embedded", "C4", True, 1): 0.66,
    ("embedded", "e", True, 4): 0.61,
    ("embedded", "C4", True, 4): 0.67,
}
PARAMS = {"e": 45_000, "C4": 30_000}
FAKE_CELL = parse_study(FAKE_STUDY).cells()[0]


def fake_result(cell, *, reliability: bool = True, steps: bool = True) -> dict:
    key = (cell.dataset, cell.group, cell.private, cell.multiplicity)
    val = VAL0[key] + 0.02 * cell.seed
    test = val - 0.01
    metrics = {
        "val_acc": val,
        "test_acc": test,
        "val_auc": 0.9,
        "test_auc": 0.9,
        "test_brier": 0.3 - 0.01 * cell.seed,
        "test_ece": 0.05 + 0.01 * cell.seed,
        "parameters": PARAMS[cell.group] + (7 if cell.dataset == "embedded" else 0),
    }
    if cell.private:
        metrics["epsilon"] = 7.41
    rows = []
    if steps:
        for step in (1, 5, 10):
            row = {
                "step": step,
                "epoch": 0,
                "loss": 1.0 / step,
                "l0_update": 0.1 * cell.seed + step / 100,
                "gwa_mean": 0.1,
                "gwa": 0.1,
            }
            if cell.private:
                row["l0_clipped"] = 0.5 + step / 100
            rows.append(row)
    if cell.private:
        privacy = {
            "private": True,
            "accountant": "rdp",
            "epsilon_spent": 7.41,
            "delta": 1e-5,
            "noise_multiplier": 1.1,
            "sample_rate": 0.05,
            "steps": 200,
            "max_grad_norm": 1.0,
            "sampling": "Poisson",
            "secure_mode": False,
            "statement": f"(7.410, 1e-05)-DP by DP-SGD for {cell.id} <fake>.",
        }
    else:
        privacy = {
            "private": False,
            "statement": "Trained WITHOUT differential privacy (non-private baseline): no privacy guarantee.",
        }
    out = {
        "cell": cell.id,
        "config": cell.config(),
        "metrics": metrics,
        "steps": rows,
        "privacy": privacy,
        "epochs": [
            {"epoch": e, "loss": 1.0, **({"gwa": 0.05 * (e + 1) + 0.01 * cell.seed} if steps else {})} for e in range(3)
        ],
        "provenance": {
            "study": cell.study.name,
            "study_sha256": "ab" * 32,
            "cell": cell.id,
            "seed": cell.seed,
            "data": {"name": cell.dataset, "sha256": "cd" * 32, "source": "fake"},
            "versions": {
                "python": "3.11.2",
                "torch": "2.13.0",
                "opacus": "1.6.0",
                "escnn": "1.0.11",
                "numpy": "1.26.4",
            },
            "device": "cpu",
        },
    }
    if reliability:
        # 4 bins; seed 0 and seed 1 differ so pooling is visible.
        s = cell.seed
        out["metrics_detail"] = {
            "reliability_test": [
                {"lower": 0.0, "upper": 0.25, "count": 0, "confidence": None, "accuracy": None},
                {"lower": 0.25, "upper": 0.5, "count": 10 + 10 * s, "confidence": 0.4, "accuracy": 0.3 + 0.3 * s},
                {"lower": 0.5, "upper": 0.75, "count": 30, "confidence": 0.6, "accuracy": 0.5},
                {"lower": 0.75, "upper": 1.0, "count": 60, "confidence": 0.9, "accuracy": 0.85 + 0.05 * s},
            ]
        }
    return out


# A small audited study: e and C4 at epsilon 2 and without DP, both canary kinds, two seeds.
AUDIT_STUDY = """\
name: fake_audit
privacy: {delta: 1.0e-5}
training: {epochs: 1}
audit: {canaries: 40}
grid:
  dataset: [embedded]
  group: [e, C4]
  epsilon: [non-private, 2]
  multiplicity: [1]
  seed: [0, 1]
  audit.kind: [input, gradient]
"""


def audit_record(cell, epsilon_lower: float) -> dict:
    """An ``audit`` record of ``result.json`` (``AuditRecord.to_json``) with the given bound."""
    kind = cell.study.audit.kind
    return {
        "kind": kind,
        "canary": "mislabeled" if kind == "input" else "dirac",
        "canaries": 40,
        "included": 21,
        "guesses": 10,
        "correct": 8,
        "k_pos": 5,
        "k_neg": 5,
        "candidates": 3,
        "confidence": 0.95,
        "delta": 1e-5,
        "epsilon_lower": epsilon_lower,
        "epsilon_lower_max": 2.6,
    }


def audited_result(cell, *, epsilon_lower: float | None = None) -> dict:
    """A fake result of an audited cell: accountant epsilon 1.98 (DP), bound 0.3 + 0.1 x seed unless given."""
    out = fake_result(cell, reliability=False)
    if cell.private:
        out["metrics"]["epsilon"] = out["privacy"]["epsilon_spent"] = 1.98
    bound = (0.3 if cell.private else 2.2) + 0.1 * cell.seed if epsilon_lower is None else epsilon_lower
    return {**out, "audit": audit_record(cell, bound)}


def write_audited_results(root: Path, study, *, bounds: dict[str, float] | None = None) -> Path:
    """result.json of every cell of the audited ``study`` under root/cells; ``bounds``: cell id -> its bound."""
    for cell in study.cells():
        d = root / "cells" / cell.id
        d.mkdir(parents=True, exist_ok=True)
        (d / "result.json").write_text(json.dumps(audited_result(cell, epsilon_lower=(bounds or {}).get(cell.id))))
    return root


def partial_result(**record) -> CellResult:
    """A CellResult from only the sections a test cares about (``steps``, ``metrics``, ``widths``, ...)."""
    widths = record.pop("widths", [8, 16, 32])
    base = {
        "cell": "embedded-e-8-1-0",
        "config": {"model": {"widths": widths}},
        "metrics": {},
        "privacy": {"private": False, "statement": "fake"},
        "provenance": fake_result(FAKE_CELL)["provenance"],
    }
    return CellResult.from_json({**base, **record})


@pytest.fixture
def fake_study_text():
    return FAKE_STUDY


@pytest.fixture
def fake_study():
    return parse_study(FAKE_STUDY)


def write_results(root: Path, study, *, skip: tuple[str, ...] = (), **kw) -> Path:
    for cell in study.cells():
        if cell.id in skip:
            continue
        d = root / "cells" / cell.id
        d.mkdir(parents=True, exist_ok=True)
        (d / "result.json").write_text(json.dumps(fake_result(cell, **kw)))
    return root


@pytest.fixture
def write_fake_results(tmp_path):
    """Write result.json for every cell of ``study`` under tmp_path/results/<study>; return that dir."""

    def write(study, **kw) -> Path:
        return write_results(tmp_path / "results" / study.name, study, **kw)

    return write


@pytest.fixture(scope="session")
def fake_report(tmp_path_factory):
    """The fake study's full report, built once per session: (study, results_dir, written paths)."""
    from reproduce.report.stage import build_report

    study = parse_study(FAKE_STUDY)
    root = tmp_path_factory.mktemp("fake_report")
    results_dir = write_results(root / "results" / "fake", study)
    paths = build_report(study, results_dir=results_dir, out_dir=root / "reports" / "fake")
    return study, results_dir, paths
