"""The paper studies run on CPU in smoke mode: every group and path builds, trains, accounts, writes."""

from __future__ import annotations

import json

import pytest

from reproduce.checks.smoke import run_smoke, smoke_cells
from reproduce.data.stand_in import stand_in
from reproduce.study import load_study
from tests.conftest import REPO


@pytest.mark.slow
@pytest.mark.parametrize("name", ["bridging_the_gap", "sparser_models_cifar10", "pathmnist_width", "privacy_audit"])
def test_paper_study_smoke(name, tmp_path, monkeypatch):
    study = load_study(REPO / "studies" / f"{name}.yaml")
    monkeypatch.chdir(tmp_path)
    assert run_smoke(study, data_root=tmp_path / "data") == 0
    cells = smoke_cells(study)
    assert {c.group for c in cells} == set(study.grid.group)
    for cell in cells:
        result = json.loads((tmp_path / "results" / f"{name}-smoke" / cell.id / "result.json").read_text())
        assert result["metrics"]["steps"] == 2
        assert "SMOKE STAND-IN" in result["provenance"]["data"]["source"]
        if cell.private:
            assert 0 < result["privacy"]["epsilon_spent"] <= float(cell.epsilon)


def test_stand_in_has_the_real_shape():
    s = stand_in("cifar10", size=28)
    assert s.images("train").shape[1:] == (32, 32, 3) and s.info.num_classes == 10
    s = stand_in("chestmnist", size=28)
    assert s.info.task.startswith("multi-label") and s.labels("train").shape[1] == 14
