"""Results under version control, end to end in a throwaway copy of the repository: a rerun is
byte-identical (git and DVC see nothing changed), `dvc push` to the default directory remote and
`dvc pull` in a fresh clone restore every cell and the report without training."""

from __future__ import annotations

import json
import sys

import pytest

from tests.conftest import study_text
from tests.pipeline.run_helpers import cells_of, embedded_data, make_repo_copy, run


def git_status(repo) -> str:
    return run(["git", "status", "--porcelain", "--untracked-files=all"], repo).stdout


def up_to_date(repo) -> bool:
    return "up to date" in run(["dvc", "status", "dvc.yaml"], repo).stdout  # the (tiny) default study


@pytest.mark.slow
def test_rerun_is_bit_identical_and_a_fresh_clone_pulls_every_result(tmp_path, tmp_path_factory):
    repo = make_repo_copy(tmp_path / "repo", study_text(name="default"), embedded_data(tmp_path_factory.getbasetemp()))
    run(["dvc", "repro"], repo)
    # What the run wrote for git: the lock, the tables and the summary, nothing else (the cells'
    # files and reports/ are in the DVC cache, run.json nowhere), as docs/versioning.md says.
    written = sorted(line[3:] for line in git_status(repo).splitlines())
    assert written == sorted(
        [
            "dvc.lock",
            "results/default/summary.json",
            "results/default/table.csv",
            "results/default/table.md",
            "results/default/table.tex",
        ]
    ), written
    cell = repo / "results/default/cells" / cells_of()[1]
    assert "train_seconds" in json.loads((cell / "run.json").read_text())
    result = json.loads((cell / "result.json").read_text())
    assert "train_seconds" not in result["metrics"] and "finished_utc" not in result["provenance"]
    assert "run.train_seconds" in result["privacy"]["unnoised_releases"]  # still a release
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
        assert (clone / "results/default/cells" / c / "result.json").read_bytes() == (
            repo / "results/default/cells" / c / "result.json"
        ).read_bytes()
    assert (clone / "reports/default/index.html").stat().st_size > 1000
    assert up_to_date(clone)
    assert "Running stage" not in run(["dvc", "repro"], clone).stdout
    assert git_status(clone) == ""

    # `dvc exp show` reads one metrics file per study, its summary, and no per-cell file.
    shown = json.loads(run(["dvc", "exp", "show", "--json"], clone).stdout)
    metrics = shown[0]["data"]["metrics"]
    assert "results/default/summary.json" in metrics, list(metrics)
    assert all(m.endswith("/summary.json") and "/cells/" not in m for m in metrics), list(metrics)


@pytest.mark.slow
def test_ci_pipeline_forced_rerun_is_clean_and_an_experiment_is_one_readable_row(tmp_path, tmp_path_factory):
    """The CI study's pipeline (pipelines/ci, with a tiny one-cell DP ci study): `dvc repro -f` on an
    unchanged tree leaves git and `dvc status` clean; `dvc exp run -S` of a grid value trains only the
    new cell; `reproduce exp show` prints it as one row of the study's numbers and changed params;
    `dvc plots diff` of a cell's steps.json holds both revisions' series."""
    pipeline, dp_cell, new_cell = "pipelines/ci/dvc.yaml", "embedded-e-8-1-0", "embedded-e-non-private-1-0"
    repo = make_repo_copy(
        tmp_path / "repo", study_text(name="ci", epsilon=8), embedded_data(tmp_path_factory.getbasetemp()), study="ci"
    )
    run(["dvc", "repro", pipeline], repo)
    run(["git", "add", "pipelines/ci/dvc.lock", "results/ci"], repo)
    run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "ci results"], repo)
    baseline = run(["git", "rev-parse", "HEAD"], repo).stdout.strip()

    # The DP cell (Poisson sampling, noise) rerun from scratch writes the same bytes: same lock, same summary.
    out = run(["dvc", "repro", "-f", pipeline], repo).stdout
    assert f"Running stage '{pipeline}:train@{dp_cell}'" in out, out
    assert git_status(repo) == "", git_status(repo)
    assert "up to date" in run(["dvc", "status", pipeline], repo).stdout

    # A grid edit as an experiment: only the new cell trains; the DP cell is unchanged, so DVC keeps it.
    out = run(
        ["dvc", "exp", "run", pipeline, "-S", "studies/ci.yaml:grid.epsilon=[non-private, 8]", "-n", "nonprivate"], repo
    ).stdout
    ran = sorted(line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage"))
    assert ran == [f"{pipeline}:attribute", f"{pipeline}:report", f"{pipeline}:train@{new_cell}"], ran

    table = run([sys.executable, "-m", "reproduce", "exp", "show", "studies/ci.yaml"], repo).stdout
    header, _, *rows = table.split("\n\n")[0].splitlines()  # then a blank line and what the columns share
    # What differs (the grid) and the study's validation accuracies per group and epsilon: no param of
    # another study, no dependency hash, no per-cell file.
    assert [c.strip() for c in header.split("  ") if c.strip()] == [
        "Experiment",
        "Created",
        "grid.epsilon",
        "e non-DP",
        "e DP eps=8",
    ], header
    assert [r.split()[0] for r in rows] == [
        "workspace",
        run(["git", "branch", "--show-current"], repo).stdout.strip(),
        "nonprivate",
    ], rows  # the workspace, the baseline, the experiment
    base_row, exp_row = rows[1], rows[2]
    assert '["non-private", 8]' in exp_row and exp_row.split()[-2] != "-", exp_row
    assert base_row.split()[-2] == "-", base_row  # the baseline has no non-private cell
    assert exp_row.split()[-1] == base_row.split()[-1] != "-"  # the same DP cell in both

    steps = f"results/ci/cells/{dp_cell}/steps.json"
    plots = json.loads(run(["dvc", "plots", "diff", baseline, "nonprivate", "--targets", steps, "--json"], repo).stdout)
    assert not plots.get("errors"), plots["errors"]
    [plot] = plots["data"][steps]
    assert len(plot["revisions"]) == 2 and "nonprivate" in plot["revisions"], plot["revisions"]
    series = plot["content"]["data"]["values"]
    assert {p["rev"] for p in series} == set(plot["revisions"]) and all("l0_update" in p for p in series)
    run(["dvc", "plots", "diff", baseline, "nonprivate", "--targets", steps, "-o", str(tmp_path / "plots")], repo)
    assert (tmp_path / "plots" / "index.html").stat().st_size > 1000
