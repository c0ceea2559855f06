"""The DVC pipelines are exactly what the generator writes from studies/, and cannot silently go stale."""

from __future__ import annotations

import shutil

import pytest
import yaml

from reproduce.cli import main
from reproduce.errors import ReproduceError
from reproduce.pipeline import DATA_PIPELINE, expected_pipelines, load_studies, render_pipeline, stale_pipelines, \
    write_pipelines
from reproduce.study import load_study, parse_study
from tests.conftest import REPO, TINY_STUDY

SHA_A, SHA_B = "a" * 64, "b" * 64


def test_committed_pipelines_are_current():
    # CI fails here when a study was added, edited or deleted without `reproduce pipeline`.
    assert stale_pipelines(REPO) == [], "run `reproduce pipeline` and commit the result"


@pytest.fixture
def repo(tmp_path):
    """studies/ and the generated pipelines of this repository, nothing else."""
    shutil.copytree(REPO / "studies", tmp_path / "studies")
    shutil.copytree(REPO / "pipelines", tmp_path / "pipelines", ignore=shutil.ignore_patterns("dvc.lock"))
    shutil.copy2(REPO / "dvc.yaml", tmp_path / "dvc.yaml")
    return tmp_path


def study_text(name: str, dataset: str, data: str = "") -> str:
    text = TINY_STUDY.format(name=name).replace("dataset: [embedded]", f"dataset: [{dataset}]")
    return text + data


def data_outs(files: dict) -> list[str]:
    """Every data/... output declared by the generated pipelines, one entry per declaration."""
    outs = []
    for text in files.values():
        for stage in yaml.safe_load(text)["stages"].values():
            body = stage.get("do", stage)
            outs += [o if isinstance(o, str) else next(iter(o)) for o in body.get("outs", [])]
    return [o for o in outs if o.startswith("data/")]


def test_a_second_study_on_a_dataset_shares_its_one_fetch_stage(repo):
    (repo / "studies/cifar_mini.yaml").write_text(study_text("cifar_mini", "cifar10"))
    assert stale_pipelines(repo) == ["pipelines/cifar_mini/dvc.yaml is missing", "pipelines/dvc.yaml is out of date"]

    assert write_pipelines(repo) == ["wrote pipelines/cifar_mini/dvc.yaml", "rewrote pipelines/dvc.yaml"]
    assert stale_pipelines(repo) == [] and write_pipelines(repo) == []
    files = expected_pipelines(load_studies(repo))
    outs = data_outs(files)
    assert sorted(outs) == sorted(set(outs)) == ["data/bloodmnist", "data/cifar10", "data/dermamnist", "data/pathmnist"]
    fetch = yaml.safe_load((repo / DATA_PIPELINE).read_text())["stages"]["fetch_cifar10"]
    assert fetch["deps"] == ["studies/cifar_mini.yaml", "studies/sparser_models_cifar10.yaml"]
    assert fetch["cmd"] == ("python -m reproduce fetch cifar10 --study studies/cifar_mini.yaml "
                            "studies/sparser_models_cifar10.yaml")
    mini = yaml.safe_load((repo / "pipelines/cifar_mini/dvc.yaml").read_text())["stages"]
    assert set(mini) == {"train", "attribute", "report"} and "data/${item.dataset}" in mini["train"]["deps"]


def test_a_deleted_study_takes_its_pipeline_and_lock_along(repo):
    (repo / "studies/cifar_mini.yaml").write_text(study_text("cifar_mini", "cifar10"))
    write_pipelines(repo)
    (repo / "pipelines/cifar_mini/dvc.lock").write_text("schema: '2.0'\n")
    (repo / "studies/cifar_mini.yaml").unlink()
    assert stale_pipelines(repo) == ["pipelines/dvc.yaml is out of date",
                                     "pipelines/cifar_mini/dvc.yaml belongs to no study in studies/"]
    assert write_pipelines(repo) == ["rewrote pipelines/dvc.yaml",
                                     "removed pipelines/cifar_mini/dvc.yaml (its study is gone)"]
    assert not (repo / "pipelines/cifar_mini").exists()
    assert (repo / DATA_PIPELINE).read_text() == (REPO / DATA_PIPELINE).read_text()


def test_a_hand_written_pipeline_is_never_touched(repo):
    (repo / "pipelines/mine").mkdir()
    (repo / "pipelines/mine/dvc.yaml").write_text("stages: {}\n")
    assert stale_pipelines(repo) == [] and write_pipelines(repo) == []
    assert (repo / "pipelines/mine/dvc.yaml").exists()


def test_studies_wanting_other_bytes_in_one_dataset_directory_are_refused(repo):
    def write(name, dataset, data):
        (repo / f"studies/{name}.yaml").write_text(study_text(name, dataset, f"data: {data}\n"))

    write("a", "octmnist", f"{{mirror_sha256: {{octmnist: {SHA_A}}}}}")
    write("b", "octmnist", f"{{mirror_sha256: {{octmnist: {SHA_B}}}}}")
    with pytest.raises(ReproduceError, match=r"studies/a.yaml and studies/b.yaml want different files for octmnist"):
        write_pipelines(repo)
    write("b", "octmnist", "{}")
    with pytest.raises(ReproduceError, match=r"\(sha256 a{64} vs the official file\)"):
        write_pipelines(repo)
    # The same bytes from another source, or another MedMNIST size (another file there), are fine.
    write("b", "octmnist", "{local_files: {octmnist: {path: x.npz, sha256: %s}}}" % SHA_A)
    write("c", "bloodmnist", "{size: 64}")
    write_pipelines(repo)
    assert stale_pipelines(repo) == []


def test_every_train_stage_tracks_shared_sections_and_keys_cells_by_grid():
    study = load_study(REPO / "studies/bridging_the_gap.yaml")
    text = render_pipeline(study)
    assert "cmd: python -m reproduce train studies/bridging_the_gap.yaml --cell ${key}" in text
    assert "wdir: ../.." in text and "fetch" not in yaml.safe_load(text)["stages"]
    # The study's pipeline depends on nothing but its name: grid edits need no regeneration.
    other = parse_study((REPO / "studies/bridging_the_gap.yaml").read_text().replace("seed: [0, 1, 2]", "seed: [0]"))
    assert other.grid.seed == [0] and render_pipeline(other) == text


def test_the_header_names_exactly_the_sections_each_train_stage_tracks():
    for name in ("bridging_the_gap", "privacy_audit"):   # DVC's matrix, and a written-out foreach (audited)
        text = render_pipeline(load_study(REPO / f"studies/{name}.yaml"))
        stage = yaml.safe_load(text)["stages"]["train"]
        stage = stage.get("do", stage)
        (sections,) = [v for entry in stage["params"] for v in entry.values()]
        sections = [s for s in sections if s != "name"]
        assert f"# ({', '.join(sections)}) are tracked params" in text
        assert ("audit" in sections) == (name == "privacy_audit")


def test_validate_warns_about_stale_pipelines(repo, monkeypatch, capsys):
    monkeypatch.chdir(repo)
    assert main(["validate", "studies/ci.yaml"]) == 0
    assert "out of date" not in capsys.readouterr().err
    (repo / "studies/cifar_mini.yaml").write_text(study_text("cifar_mini", "cifar10"))
    assert main(["validate", "studies/cifar_mini.yaml"]) == 0
    err = capsys.readouterr().err
    assert "pipelines/cifar_mini/dvc.yaml is missing" in err and "reproduce repro studies/<study>.yaml" in err
    assert main(["pipeline"]) == 0 and "wrote pipelines/cifar_mini/dvc.yaml" in capsys.readouterr().out
    assert main(["validate", "studies/cifar_mini.yaml"]) == 0 and "out of date" not in capsys.readouterr().err
