"""The committed DVC pipelines are exactly what the generator writes from the studies."""

from __future__ import annotations

from reproduce.pipeline import pipeline_path, render_pipeline
from reproduce.study import load_study
from tests.conftest import REPO


def test_committed_pipelines_are_current():
    for path in sorted((REPO / "studies").glob("*.yaml")):
        study = load_study(path)
        committed = (REPO / pipeline_path(study)).read_text()
        assert committed == render_pipeline(study), f"run `reproduce pipeline {path.relative_to(REPO)}`"


def test_every_train_stage_tracks_shared_sections_and_keys_cells_by_grid():
    study = load_study(REPO / "studies/bridging_the_gap.yaml")
    text = render_pipeline(study)
    assert "cmd: python -m reproduce train studies/bridging_the_gap.yaml --cell ${key}" in text
    assert "wdir: ../.." in text and "fetch ${item} --study studies/bridging_the_gap.yaml" in text
