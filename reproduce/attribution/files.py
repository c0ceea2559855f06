"""Reading the attribution stage's files (``results/<study>/attribution/``), for the report and tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from reproduce.atomic import read_json
from reproduce.errors import ReproduceError

SCORES_FILE = "scores.json"


def read_scores(results_dir: Path) -> dict[str, dict[str, float]]:
    """``cells`` of ``results_dir/attribution/scores.json``; empty when the stage has not run."""
    path = Path(results_dir) / "attribution" / SCORES_FILE
    if not path.exists():
        return {}
    remedy = "rerun the attribution stage (`reproduce attribute <study>`, or `dvc repro` the study)"
    doc = read_json(path, what="attribution scores", remedy=remedy)
    if not isinstance(doc, dict) or not isinstance(doc.get("cells"), dict):
        raise ReproduceError(f"{path}: not the attribution stage's scores (no `cells` mapping); {remedy}")
    return doc["cells"]


def read_maps(results_dir: Path, cell_id: str) -> dict[str, np.ndarray] | None:
    """The arrays of one cell's ``<cell>.npz``; None when absent."""
    path = Path(results_dir) / "attribution" / f"{cell_id}.npz"
    if not path.exists():
        return None
    with np.load(path) as data:
        return {k: data[k] for k in data.files}
