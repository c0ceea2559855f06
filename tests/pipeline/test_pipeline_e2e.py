"""End to end: a tiny study through the real `dvc repro` in a temporary copy of the repository."""

from __future__ import annotations

import hashlib
import io
import json

import numpy as np
import pytest
import yaml

from tests.conftest import study_text
from tests.http_server import serve
from tests.pipeline.run_helpers import embedded_data, env_for, make_repo_copy, run


@pytest.fixture
def repo_copy(tmp_path, tmp_path_factory):
    """This repository's working tree (tracked and untracked-not-ignored files, as `reproduce run`'s
    workspaces see it) in a fresh git repo, the tiny study as the default, the embedded set linked in."""
    return make_repo_copy(tmp_path / "repo", study_text(name="default"), embedded_data(tmp_path_factory.getbasetemp()))


@pytest.mark.slow
def test_dvc_repro_runs_the_study_caches_and_reruns_only_edited_cells(repo_copy):
    r = repo_copy
    run(["reproduce", "fetch"], r)
    out = run(["dvc", "repro"], r).stdout
    assert out.count("Running stage 'train@") == 2
    table = (r / "results/default/table.md").read_text()
    assert "| embedded | e |" in table and "DP eps=8" in table and "non-DP" in table
    result = json.loads((r / "results/default/cells/embedded-e-8-1-0/result.json").read_text())
    assert result["privacy"]["private"] and result["privacy"]["epsilon_spent"] <= 8.0
    assert result["privacy"]["steps"] == 4  # 1 epoch at q = 64/256
    assert result["provenance"]["data"]["sha256"]
    metrics = run(["dvc", "metrics", "show", "--json"], r).stdout
    assert "summary.json" in metrics
    assert (r / "reports/default/index.html").stat().st_size > 1000
    # the attribution stage ran on the kept models of both cells
    scores = json.loads((r / "results/default/attribution/scores.json").read_text())["cells"]
    assert sorted(scores) == ["embedded-e-8-1-0", "embedded-e-non-private-1-0"]

    # Nothing changed: nothing reruns.
    assert "Running stage" not in run(["dvc", "repro"], r).stdout

    # Edit one seed: dvc status names exactly the new cells, repro runs only them and the table.
    study = r / "studies/default.yaml"
    study.write_text(study_text(name="default", seed=[0, 1]))
    status = run(["dvc", "status", "dvc.yaml"], r).stdout
    changed = sorted(line.rstrip(":") for line in status.splitlines() if line and not line[0].isspace())
    # (the attribute stage is not stale yet: it follows from the cells the new trains write)
    assert changed == ["report", "train@embedded-e-8-1-1", "train@embedded-e-non-private-1-1"]
    out = run(["dvc", "repro"], r).stdout
    ran = sorted(line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage"))
    assert ran == ["attribute", "report", "train@embedded-e-8-1-1", "train@embedded-e-non-private-1-1"]

    # A stale result can never look current: an edit deep in a stage's imports, or of a pinned package,
    # names exactly the stages that can read it. (The lists were typed by hand and missed all four.)
    trains = [
        f"train@{c}"
        for c in ("embedded-e-8-1-0", "embedded-e-8-1-1", "embedded-e-non-private-1-0", "embedded-e-non-private-1-1")
    ]
    for path, old, new, stale in (
        ("reproduce/records/provenance.py", None, None, [*trains, "attribute", "report"]),  # shapes result.json
        ("reproduce/training/checkpoint.py", None, None, trains),  # train's resume only
        ("reproduce/checks/audit.py", None, None, ["report"]),  # the report's reader
        ("pyproject.toml", '"tqdm>=4.66"', '"tqdm>=4.67"', [*trains, "attribute", "report"]),
    ):
        original = (r / path).read_text()
        (r / path).write_text(original.replace(old, new) if old else original + "# edited\n")
        assert stale_stages(run(["dvc", "status", "dvc.yaml"], r).stdout) == sorted(stale), path
        (r / path).write_text(original)
    assert "up to date" in run(["dvc", "status", "dvc.yaml"], r).stdout

    # What each stage imports when it really runs (python -X importtime) is covered by its dependencies.
    stages = yaml.safe_load((r / "dvc.yaml").read_text())["stages"]
    for name, cmd in (
        ("train", stages["train"]["cmd"].replace("${key}", "embedded-e-8-1-0")),
        ("attribute", stages["attribute"]["cmd"]),
        ("report", stages["report"]["cmd"]),
    ):
        err = run(cmd.split(), r, env=env_for(r, {"PYTHONPROFILEIMPORTTIME": "1"})).stderr
        imported = {line.rsplit("|", 1)[1].strip() for line in err.splitlines() if line.startswith("import time:")}
        files = {module_file(m, r) for m in imported if m.split(".")[0] == "reproduce"}
        assert len(files) > 10, err[-2000:]
        uncovered = sorted(f for f in files if not any(f == d or f.startswith(d + "/") for d in stages[name]["deps"]))
        assert uncovered == [], f"{name} imports files that are not among its dependencies"


def stale_stages(status: str) -> list[str]:
    """The stages `dvc status` names (top-level lines), sorted."""
    return sorted(line.rstrip(":") for line in status.splitlines() if line and not line[0].isspace())


def module_file(module: str, repo) -> str:
    """reproduce.a.b -> reproduce/a/b.py or reproduce/a/b/__init__.py, relative to the repository."""
    base = "/".join(module.split("."))
    return f"{base}.py" if (repo / f"{base}.py").is_file() else f"{base}/__init__.py"


def tiny_retinamnist(n_train: int = 256, n_eval: int = 64) -> bytes:
    """An npz in MedMNIST's retinamnist layout (28x28 RGB, 5 grades, every grade in every split).

    No committed study names retinamnist, so the throwaway studies are its only users."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", n_train), ("val", n_eval), ("test", n_eval)):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, 28, 28, 3), dtype=np.uint8)
        arrays[f"{split}_labels"] = rng.permutation(np.arange(n) % 5).astype(np.uint8)[:, None]
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def stages_run(out: str) -> list[str]:
    return sorted(line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage"))


@pytest.mark.slow
def test_studies_sharing_a_downloaded_dataset_fetch_it_once_and_outlive_each_other(repo_copy, tmp_path):
    """Two new studies on one downloaded dataset and one on the embedded set, each added as a user
    would (one YAML file), through `reproduce pipeline` + `dvc repro` and `reproduce repro`."""
    repo = repo_copy
    npz = tiny_retinamnist()
    env = env_for(repo, {"no_proxy": "127.0.0.1,localhost", "NO_PROXY": "127.0.0.1,localhost"})
    env.pop("REPRODUCE_MEDMNIST_MIRROR", None)
    with serve(tmp_path / "served") as server:
        server.add("retinamnist.npz", npz)
        served = {"mirror": f"{server.base_url}/", "mirror_sha256": {"retinamnist": hashlib.sha256(npz).hexdigest()}}
        for name, dataset, epsilon in (
            ("pair_a", "retinamnist", "non-private"),
            ("pair_b", "retinamnist", 8),
            ("solo", "embedded", "non-private"),
        ):
            (repo / "studies" / f"{name}.yaml").write_text(
                study_text(name=name, dataset=dataset, epsilon=epsilon, data=served if dataset != "embedded" else None)
            )

        out = run(["reproduce", "pipeline"], repo, env=env).stdout
        assert {
            "wrote pipelines/pair_a/dvc.yaml",
            "wrote pipelines/pair_b/dvc.yaml",
            "wrote pipelines/solo/dvc.yaml",
            "rewrote pipelines/dvc.yaml",
        } == set(out.split("\n")) - {""}
        # DVC itself runs the shared fetch stage upstream of the study's cells.
        out = run(["dvc", "repro", "pipelines/pair_a/dvc.yaml"], repo, env=env).stdout
        assert stages_run(out) == [
            "pipelines/dvc.yaml:fetch_retinamnist",
            "pipelines/pair_a/dvc.yaml:attribute",
            "pipelines/pair_a/dvc.yaml:report",
            "pipelines/pair_a/dvc.yaml:train@retinamnist-e-non-private-1-0",
        ]
        # The second study on the dataset finds it fetched; the embedded one fetches nothing.
        out = run(["reproduce", "repro", "studies/pair_b.yaml"], repo, env=env).stdout
        assert stages_run(out) == [
            "pipelines/pair_b/dvc.yaml:attribute",
            "pipelines/pair_b/dvc.yaml:report",
            "pipelines/pair_b/dvc.yaml:train@retinamnist-e-8-1-0",
        ]
        out = run(["reproduce", "repro", "studies/solo.yaml"], repo, env=env).stdout
        assert stages_run(out) == [
            "pipelines/solo/dvc.yaml:attribute",
            "pipelines/solo/dvc.yaml:report",
            "pipelines/solo/dvc.yaml:train@embedded-e-non-private-1-0",
        ]
        assert server.requests == [("/retinamnist.npz", None)]  # one download for both studies
        assert sorted(p.name for p in (repo / "data/retinamnist").iterdir()) == ["retinamnist.npz"]
        for name, dataset in (("pair_a", "retinamnist"), ("pair_b", "retinamnist"), ("solo", "embedded")):
            assert f"| {dataset} | e |" in (repo / f"results/{name}/table.md").read_text(), name
        assert "DP eps=8" in (repo / "results/pair_b/table.md").read_text()

        # Deleting a study: its pipeline goes with it; the other keeps its finished cells and still renders.
        (repo / "studies/pair_a.yaml").unlink()
        out = run(["reproduce", "repro", "studies/pair_b.yaml"], repo, env=env).stdout
        assert "pipeline: removed pipelines/pair_a/dvc.yaml (its study is gone)" in out
        assert not (repo / "pipelines/pair_a").exists()
        assert stages_run(out) == ["pipelines/dvc.yaml:fetch_retinamnist"]  # fewer studies use it: re-checked
        assert server.requests == [("/retinamnist.npz", None)]
        status = run(["dvc", "status", "--with-deps", "pipelines/pair_b/dvc.yaml"], repo, env=env).stdout
        assert "up to date" in status, status
        (repo / "results/pair_b/table.md").unlink()
        assert stages_run(run(["reproduce", "repro", "studies/pair_b.yaml"], repo, env=env).stdout) == [
            "pipelines/pair_b/dvc.yaml:report"
        ]
        assert "| retinamnist | e |" in (repo / "results/pair_b/table.md").read_text()


@pytest.mark.slow
def test_a_dry_run_of_a_study_that_never_ran_lists_its_stages_and_writes_nothing(repo_copy):
    # DVC stats every dependency in a dry run (treeverse/dvc#9021): results/<study>/cells did not exist yet.
    (repo_copy / "studies/fresh.yaml").write_text(study_text(name="fresh"))
    run(["reproduce", "fetch"], repo_copy)
    out = run(["reproduce", "repro", "studies/fresh.yaml", "--dry"], repo_copy).stdout
    assert stages_run(out) == [
        "pipelines/fresh/dvc.yaml:attribute",
        "pipelines/fresh/dvc.yaml:report",
        "pipelines/fresh/dvc.yaml:train@embedded-e-8-1-0",
        "pipelines/fresh/dvc.yaml:train@embedded-e-non-private-1-0",
    ]
    assert not (repo_copy / "results/fresh").exists()
