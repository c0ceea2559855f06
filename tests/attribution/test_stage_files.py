"""The attribution stage on trained cells of a tiny study: files, scores, determinism, no retraining."""

from __future__ import annotations

import json

import numpy as np
import pytest

from reproduce.attribution.files import read_maps, read_scores
from reproduce.attribution.stage import PER_CLASS, attribute_study
from reproduce.study import Study
from reproduce.training.cell import run_cell, write_cell
from tests.conftest import tiny_study
from tests.pipeline.run_helpers import embedded_data


def attr_study(*, groups=("e", "C4"), widths=None) -> Study:
    """e and C4 with and without DP, 2 steps of the default optimizer on 64 embedded images."""
    return tiny_study(
        name="attr",
        model={"widths": widths or {"e": [4, 4, 8], "C4": [2, 2, 4]}},
        training={
            "optimizer": None,
            "batch_size": 32,
            "physical_batch_size": 32,
            "epochs": None,
            "steps": 2,
            "max_train_samples": 64,
        },
        group=groups,
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = embedded_data(tmp_path_factory.getbasetemp()).parent
    study = attr_study()
    results = tmp_path_factory.mktemp("results")
    for cell in study.cells():
        write_cell(run_cell(cell, data_root=root, progress=False), results / "cells" / cell.id)
    return study, results, root


def test_every_trained_cell_gets_maps_and_scores(trained, tmp_path):
    import shutil

    study, results, root = trained
    # a cell without a result yet (still training, or not pulled) is skipped, not an error
    partial = tmp_path / "results"
    shutil.copytree(results, partial, ignore=shutil.ignore_patterns(study.cells()[3].id))
    paths = attribute_study(study, results_dir=partial, data_root=root)
    assert paths[-1].name == "scores.json"
    trained_ids = [c.id for c in study.cells()[:3]]
    scores = read_scores(partial)
    assert sorted(scores) == sorted(trained_ids)
    for cell_id, s in scores.items():
        # the embedded generator's masks give the object share; chance level is the object's area
        assert 0 < s["object_area"] < 1 and 0 <= s["object_share/gradcam"] <= 1
        assert -1 <= s["rank_correlation/gradcam"] <= 1 and s["fir/mean"] > 0
        maps = read_maps(partial, cell_id)
        n = 8 * PER_CLASS  # the embedded set's 8 classes
        assert maps["images"].shape == (n, 28, 28, 3) and maps["gradcam"].shape == (n, 28, 28)
        assert maps["guided"].shape == (n, 3, 28, 28)
    # the same images for every cell of a dataset
    a, b = (read_maps(partial, i)["indices"] for i in trained_ids[:2])
    np.testing.assert_array_equal(a, b)


def test_a_rerun_writes_identical_bytes_and_drops_stale_cells(trained, tmp_path):
    study, results, root = trained
    first = {p.name: p.read_bytes() for p in attribute_study(study, results_dir=results, data_root=root)}
    (results / "attribution" / "old-cell.npz").write_bytes(b"stale")
    second = {p.name: p.read_bytes() for p in attribute_study(study, results_dir=results, data_root=root)}
    assert first == second
    assert not (results / "attribution" / "old-cell.npz").exists()
    assert json.loads(second["scores.json"])["per_class"] == PER_CLASS


def test_the_report_shows_figure2_and_the_scores(trained, tmp_path):
    from reproduce.report.stage import build_report

    study, results, root = trained
    attribute_study(study, results_dir=results, data_root=root)
    paths = build_report(study, results_dir=results, out_dir=tmp_path / "report")
    assert (tmp_path / "report" / "figure2-embedded.png") in paths
    table = (results / "table.md").read_text()
    assert "## Where the models look" in table and "| embedded | C4 | non-DP, no aug | 1 |" in table
    summary = json.loads((results / "summary.json").read_text())
    assert "embedded/e/attribution/object_share (Grad-CAM)/DP eps=8, no aug" in summary
    page = (tmp_path / "report" / "index.html").read_text()
    assert 'id="attribution-scores"' in page and "Figure 2" in page


def test_figure2_shows_the_conventional_and_the_best_equivariant_model():
    from reproduce.report.attribution import panel_columns
    from tests.report.conftest import fake_result  # noqa: F401  (the report tests' fakes)

    study = attr_study(groups=("e", "C4", "C8"), widths=[2, 2, 4])

    class R:
        def __init__(self, acc):
            self.acc = acc

        def metric(self, name):
            return self.acc

    accs = {"e": 0.5, "C4": 0.6, "C8": 0.7}
    results = {c.id: R(accs[c.group] if c.private else 0.0) for c in study.cells()}
    assert panel_columns(study, results, "embedded", 1) == [
        ("e", "non-private"),
        ("e", 8),
        ("C8", "non-private"),
        ("C8", 8),
    ]


def test_a_small_test_split_gets_fewer_images_per_class():
    from reproduce.attribution.stage import _selection

    labels = np.array([0, 0, 1, 2, 2, 2, 0, 1]).reshape(-1, 1)
    idx = _selection(labels, 4)  # class 3 absent, class 1 has two images
    assert sorted(labels[idx, 0].tolist()) == [0, 0, 1, 1, 2, 2]
    full = np.repeat(np.arange(3), 6)
    np.testing.assert_array_equal(_selection(full, 3), _selection(full, 3))
    assert len(_selection(full, 3)) == 3 * PER_CLASS
