"""The attribution stage on trained cells of a tiny study: files, scores, determinism, no retraining."""

from __future__ import annotations

import json

import numpy as np
import pytest

from reproduce.attribution.stage import PER_CLASS, attribute_study, read_maps, read_scores
from reproduce.study import parse_study
from reproduce.train import run_cell, write_cell
from tests.run.run_helpers import embedded_data

STUDY = """\
name: attr
model:
  widths: {e: [4, 4, 8], C4: [2, 2, 4]}
training: {batch_size: 32, physical_batch_size: 32, steps: 2, max_train_samples: 64}
grid: {dataset: [embedded], group: [e, C4], epsilon: [non-private, 8], multiplicity: [1], seed: [0]}
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = embedded_data(tmp_path_factory.getbasetemp()).parent
    study = parse_study(STUDY)
    results = tmp_path_factory.mktemp("results")
    for cell in study.cells()[:3]:   # the fourth cell stays untrained: skipped, not an error
        write_cell(run_cell(cell, data_root=root, progress=False), results / "cells" / cell.id)
    return study, results, root


def test_every_trained_cell_gets_maps_and_scores(trained):
    study, results, root = trained
    paths = attribute_study(study, results_dir=results, data_root=root)
    assert paths[-1].name == "scores.json"
    trained_ids = [c.id for c in study.cells()[:3]]
    scores = read_scores(results)
    assert sorted(scores) == sorted(trained_ids)
    for cell_id, s in scores.items():
        # the embedded generator's masks give the object share; chance level is the object's area
        assert 0 < s["object_area"] < 1 and 0 <= s["object_share/gradcam"] <= 1
        assert -1 <= s["rank_correlation/gradcam"] <= 1 and s["fir/mean"] > 0
        maps = read_maps(results, cell_id)
        n = 8 * PER_CLASS   # the embedded set's 8 classes
        assert maps["images"].shape == (n, 28, 28, 3) and maps["gradcam"].shape == (n, 28, 28)
        assert maps["guided"].shape == (n, 3, 28, 28)
    # the same images for every cell of a dataset
    a, b = (read_maps(results, i)["indices"] for i in trained_ids[:2])
    np.testing.assert_array_equal(a, b)


def test_a_rerun_writes_identical_bytes_and_drops_stale_cells(trained, tmp_path):
    study, results, root = trained
    first = {p.name: p.read_bytes() for p in attribute_study(study, results_dir=results, data_root=root)}
    (results / "attribution" / "old-cell.npz").write_bytes(b"stale")
    second = {p.name: p.read_bytes() for p in attribute_study(study, results_dir=results, data_root=root)}
    assert first == second
    assert not (results / "attribution" / "old-cell.npz").exists()
    assert json.loads(second["scores.json"])["per_class"] == PER_CLASS
