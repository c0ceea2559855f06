"""Results under version control, end to end in a throwaway copy of the repository: a rerun is
byte-identical (git and DVC see nothing changed), `dvc push` to the default directory remote and
`dvc pull` in a fresh clone restore every cell and the report without training."""

from __future__ import annotations

import json

import pytest

from tests.run.run_helpers import cells_of, embedded_data, make_repo_copy, run, tiny_study


def git_status(repo) -> str:
    return run(["git", "status", "--porcelain", "--untracked-files=all"], repo).stdout


def up_to_date(repo) -> bool:
    return "up to date" in run(["dvc", "status", "dvc.yaml"], repo).stdout   # the (tiny) default study


@pytest.mark.slow
def test_rerun_is_bit_identical_and_a_fresh_clone_pulls_every_result(tmp_path, tmp_path_factory):
    repo = make_repo_copy(tmp_path / "repo", tiny_study(), embedded_data(tmp_path_factory.getbasetemp()))
    run(["dvc", "repro"], repo)
    # What the run wrote for git: the lock, the tables and the summary, nothing else (the cells'
    # files and reports/ are in the DVC cache, run.json nowhere), as the README's rule says.
    written = sorted(line[3:] for line in git_status(repo).splitlines())
    assert written == sorted(["dvc.lock",
                              "results/default/summary.json", "results/default/table.csv",
                              "results/default/table.md", "results/default/table.tex"]), written
    cell = repo / "results/default/cells" / cells_of()[1]
    assert "train_seconds" in json.loads((cell / "run.json").read_text())
    result = json.loads((cell / "result.json").read_text())
    assert "train_seconds" not in result["metrics"] and "finished_utc" not in result["provenance"]
    assert "run.train_seconds" in result["privacy"]["unnoised_releases"]   # still a release
    run(["git", "add", "dvc.lock", "results"], repo)
    run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "results"], repo)
    assert git_status(repo) == ""

    # Forced rerun of every stage on an unchanged tree: byte-identical outputs, so the lock is unchanged.
    out = run(["dvc", "repro", "-f"], repo).stdout
    assert out.count("Running stage 'train@") == 2
    assert git_status(repo) == "" and up_to_date(repo)

    # The default remote is a directory beside the clone; push names what ran (studies never run have
    # nothing to push), pull takes whatever the remote has.
    run(["dvc", "push", "dvc.yaml", "data.dvc"], repo)
    assert (tmp_path / "reproduce-dvc-storage").is_dir()
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(repo), str(clone)], tmp_path)
    run(["dvc", "pull", "--allow-missing"], clone)
    for c in cells_of():
        assert (clone / "results/default/cells" / c / "result.json").read_bytes() == \
            (repo / "results/default/cells" / c / "result.json").read_bytes()
    assert (clone / "reports/default/index.html").stat().st_size > 1000
    assert up_to_date(clone)
    assert "Running stage" not in run(["dvc", "repro"], clone).stdout
    assert git_status(clone) == ""

    # `dvc exp show` reads one metrics file per study, its summary, and no per-cell file.
    shown = json.loads(run(["dvc", "exp", "show", "--json"], clone).stdout)
    metrics = shown[0]["data"]["metrics"]
    assert "results/default/summary.json" in metrics, list(metrics)
    assert all(m.endswith("/summary.json") and "/cells/" not in m for m in metrics), list(metrics)
