"""The DVC pipelines are exactly what the generator writes from studies/, and cannot silently go stale."""

from __future__ import annotations

import shutil
import tomllib

import pytest
import yaml

from reproduce.cli import main
from reproduce.errors import ReproduceError
from reproduce.pipeline.stages import (
    DATA_PIPELINE,
    ENVIRONMENT,
    expected_pipelines,
    load_studies,
    render_pipeline,
    stage_code,
    stale_pipelines,
    write_pipelines,
)
from reproduce.study import load_study, parse_study
from tests.conftest import REPO, study_text

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


def data_outs(files: dict) -> list[str]:
    """Every data/... output declared by the generated pipelines, one entry per declaration."""
    outs = []
    for text in files.values():
        for stage in yaml.safe_load(text)["stages"].values():
            body = stage.get("do", stage)
            outs += [o if isinstance(o, str) else next(iter(o)) for o in body.get("outs", [])]
    return [o for o in outs if o.startswith("data/")]


def test_a_second_study_on_a_dataset_shares_its_one_fetch_stage(repo):
    (repo / "studies/cifar_mini.yaml").write_text(study_text(name="cifar_mini", dataset="cifar10"))
    assert stale_pipelines(repo) == ["pipelines/cifar_mini/dvc.yaml is missing", "pipelines/dvc.yaml is out of date"]

    assert write_pipelines(repo) == ["wrote pipelines/cifar_mini/dvc.yaml", "rewrote pipelines/dvc.yaml"]
    assert stale_pipelines(repo) == [] and write_pipelines(repo) == []
    files = expected_pipelines(load_studies(repo))
    outs = data_outs(files)
    assert sorted(outs) == sorted(set(outs)) == ["data/bloodmnist", "data/cifar10", "data/dermamnist", "data/pathmnist"]
    fetch = yaml.safe_load((repo / DATA_PIPELINE).read_text())["stages"]["fetch_cifar10"]
    assert fetch["deps"][:2] == ["studies/cifar_mini.yaml", "studies/sparser_models_cifar10.yaml"]
    assert "reproduce/data/cifar10.py" in fetch["deps"]
    assert not [d for d in fetch["deps"] if d.startswith("reproduce/training")]
    assert fetch["cmd"] == (
        "python -m reproduce fetch cifar10 --study studies/cifar_mini.yaml studies/sparser_models_cifar10.yaml"
    )
    mini = yaml.safe_load((repo / "pipelines/cifar_mini/dvc.yaml").read_text())["stages"]
    assert set(mini) == {"train", "attribute", "report"} and "data/${item.dataset}" in mini["train"]["deps"]


def test_a_deleted_study_takes_its_pipeline_and_lock_along(repo):
    (repo / "studies/cifar_mini.yaml").write_text(study_text(name="cifar_mini", dataset="cifar10"))
    write_pipelines(repo)
    (repo / "pipelines/cifar_mini/dvc.lock").write_text("schema: '2.0'\n")
    (repo / "studies/cifar_mini.yaml").unlink()
    assert stale_pipelines(repo) == [
        "pipelines/dvc.yaml is out of date",
        "pipelines/cifar_mini/dvc.yaml belongs to no study in studies/",
    ]
    assert write_pipelines(repo) == [
        "rewrote pipelines/dvc.yaml",
        "removed pipelines/cifar_mini/dvc.yaml (its study is gone)",
    ]
    assert not (repo / "pipelines/cifar_mini").exists()
    assert (repo / DATA_PIPELINE).read_text() == (REPO / DATA_PIPELINE).read_text()


def test_a_hand_written_pipeline_is_never_touched(repo):
    (repo / "pipelines/mine").mkdir()
    (repo / "pipelines/mine/dvc.yaml").write_text("stages: {}\n")
    assert stale_pipelines(repo) == [] and write_pipelines(repo) == []
    assert (repo / "pipelines/mine/dvc.yaml").exists()


def test_studies_wanting_other_bytes_in_one_dataset_directory_are_refused(repo):
    def write(name, dataset, data):
        (repo / f"studies/{name}.yaml").write_text(study_text(name=name, dataset=dataset, data=data))

    write("a", "octmnist", {"mirror_sha256": {"octmnist": SHA_A}})
    write("b", "octmnist", {"mirror_sha256": {"octmnist": SHA_B}})
    with pytest.raises(ReproduceError, match=r"studies/a.yaml and studies/b.yaml want different files for octmnist"):
        write_pipelines(repo)
    write("b", "octmnist", {})
    with pytest.raises(ReproduceError, match=r"\(sha256 a{64} vs the official file\)"):
        write_pipelines(repo)
    # The same bytes from another source, or another MedMNIST size (another file there), are fine.
    write("b", "octmnist", {"local_files": {"octmnist": {"path": "x.npz", "sha256": SHA_A}}})
    write("c", "bloodmnist", {"size": 64})
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
    for name in ("bridging_the_gap", "privacy_audit"):  # DVC's matrix, and a written-out foreach (audited)
        text = render_pipeline(load_study(REPO / f"studies/{name}.yaml"))
        stage = yaml.safe_load(text)["stages"]["train"]
        stage = stage.get("do", stage)
        (sections,) = [v for entry in stage["params"] for f, v in entry.items() if f.startswith("studies/")]
        sections = [s for s in sections if s != "name"]
        assert f"# ({', '.join(sections)}) are tracked params" in text
        assert ("audit" in sections) == (name == "privacy_audit")


def test_validate_warns_about_stale_pipelines(repo, monkeypatch, capsys):
    monkeypatch.chdir(repo)
    assert main(["validate", "studies/ci.yaml"]) == 0
    assert "out of date" not in capsys.readouterr().err
    (repo / "studies/cifar_mini.yaml").write_text(study_text(name="cifar_mini", dataset="cifar10"))
    assert main(["validate", "studies/cifar_mini.yaml"]) == 0
    err = capsys.readouterr().err
    assert "pipelines/cifar_mini/dvc.yaml is missing" in err and "reproduce repro studies/<study>.yaml" in err
    assert main(["pipeline"]) == 0 and "wrote pipelines/cifar_mini/dvc.yaml" in capsys.readouterr().out
    assert main(["validate", "studies/cifar_mini.yaml"]) == 0 and "out of date" not in capsys.readouterr().err


PACKAGE = {  # a miniature of the package: what each stage command can import, and what it cannot
    "__init__.py": "",
    "__main__.py": "from reproduce.cli import main\nmain()\n",
    "cli.py": (
        "from reproduce.errors import Error\n"
        "def main():\n    _quiet()\n"
        "def _quiet():\n    import reproduce.light\n"
        "def cmd_train():\n    from reproduce.train import run\n"
        "def cmd_report():\n    from reproduce.report import stage\n"
    ),
    "errors.py": "class Error(Exception): ...\n",
    "light.py": "",
    "train.py": "from . import deep\nimport reproduce.whole.a\ndef run():\n    from .pkg.sub import x\n",
    "deep.py": "",
    "pkg/__init__.py": "",
    "pkg/sub.py": "x = 1\n",
    "pkg/unused.py": "",
    "pkg/assets/table.yaml": "a: 1\n",
    "whole/__init__.py": "from .b import y\n",
    "whole/a.py": "",
    "whole/b.py": "y = 2\n",
    "report/__init__.py": "",
    "report/stage.py": "from ..errors import Error\n",
    "report/__main__.py": "",
}


def test_stage_code_is_the_import_closure_of_the_command_that_runs(tmp_path):
    for rel, text in PACKAGE.items():
        (tmp_path / "reproduce" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "reproduce" / rel).write_text(text)
    (tmp_path / "reproduce/__pycache__").mkdir()
    (tmp_path / "reproduce/__pycache__/cli.cpython-311.pyc").write_bytes(b"")  # .dvcignore'd
    # Imports inside functions count (they run lazily, in the stage), relative ones too; of the CLI, only
    # main and the stage's own command run; a package's data files go with it; a directory whose every
    # file is a dependency is listed as itself (whole/, pkg/assets/).
    assert stage_code("train", tmp_path) == [
        "reproduce/__init__.py",
        "reproduce/__main__.py",
        "reproduce/cli.py",
        "reproduce/deep.py",
        "reproduce/errors.py",
        "reproduce/light.py",
        "reproduce/pkg/__init__.py",
        "reproduce/pkg/assets",
        "reproduce/pkg/sub.py",
        "reproduce/train.py",
        "reproduce/whole",
    ]
    assert stage_code("report", tmp_path) == [
        "reproduce/__init__.py",
        "reproduce/__main__.py",
        "reproduce/cli.py",
        "reproduce/errors.py",
        "reproduce/light.py",
        "reproduce/report/__init__.py",
        "reproduce/report/stage.py",
    ]


def test_every_stage_that_computes_a_number_tracks_the_pinned_environment():
    text = render_pipeline(load_study(REPO / "studies/bridging_the_gap.yaml"))
    stages = yaml.safe_load(text)["stages"]
    for name in ("train", "attribute", "report"):
        assert ENVIRONMENT in stages[name]["params"], name
    # The keys name what the Makefile installs, so a pin edit reaches DVC.
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    ((path, keys),) = ENVIRONMENT.items()
    assert (
        path == "pyproject.toml" and pyproject["project"]["dependencies"] and pyproject["tool"]["reproduce"]["no-deps"]
    )
    assert keys == ["project.dependencies", "tool.reproduce.no-deps"]


def test_the_committed_train_stage_depends_on_every_module_it_imports():
    # provenance.py shapes every result.json; the hand-typed lists left it (and five others) out.
    deps = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["train"]["deps"]
    for module in (
        "reproduce/records/provenance.py",
        "reproduce/device.py",
        "reproduce/training/checkpoint.py",
        "reproduce/atomic.py",
        "reproduce/user_config.py",
        "reproduce/errors.py",
    ):
        # listed as itself, or as a directory every file of which is a dependency
        assert any(module == d or module.startswith(d + "/") for d in deps), module
