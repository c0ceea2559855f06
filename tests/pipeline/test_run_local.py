"""`reproduce run` with local processes and in-process (debug) on a tiny study in a copy of the repository:
every cell lands in the shared cache, `dvc repro` afterwards only restores them and renders the
report, a killed submitter loses nothing, a failed cell is reported and rerun alone."""

from __future__ import annotations

import signal
import subprocess
import time

import pytest

from tests.conftest import study_text
from tests.pipeline.run_helpers import (
    assert_dvc_repro_only_restores,
    cells_of,
    embedded_data,
    env_for,
    make_repo_copy,
    record,
    run,
)

SEEDS = (0,)
EPS = ("non-private", 8)
CELLS = cells_of(SEEDS, EPS)


@pytest.fixture
def repo(tmp_path, tmp_path_factory):
    return make_repo_copy(
        tmp_path / "repo",
        study_text(name="default", seed=SEEDS, epsilon=EPS),
        embedded_data(tmp_path_factory.getbasetemp()),
    )


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_run_local_survives_a_killed_submitter_and_dvc_repro_only_restores(repo):
    env = env_for(repo)
    cmd = ["reproduce", "run", "studies/default.yaml", "--executor", "local", "--jobs", "2"]
    first = subprocess.Popen(cmd, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for(lambda: all(record(repo, c).get("state") == "running" for c in CELLS), 120, "both cells running")
        jobs = {c: record(repo, c)["job_id"] for c in CELLS}
        first.send_signal(signal.SIGKILL)  # the submitting process dies; its jobs go on
        first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
    # The rerun watches the same jobs (no second submission) until they finish.
    again = run(cmd, repo, env=env, timeout=400)
    out = again.stdout
    for cell in CELLS:
        assert f"{cell}: running (job {jobs[cell]} from an earlier run" in out, out
        assert record(repo, cell)["job_id"] == jobs[cell] and record(repo, cell)["state"] == "done"
    assert f"all {len(CELLS)} cells done" in out
    # Nothing pending any more: nothing is submitted.
    assert "nothing to run" in run(cmd, repo, env=env).stdout
    # The main workspace's plain `dvc repro` restores every cell from the cache and runs the rest only.
    assert assert_dvc_repro_only_restores(repo, CELLS, env)  # and the report ran


@pytest.mark.slow
def test_run_debug_reports_a_failed_cell_and_reruns_only_it(repo, monkeypatch, capsys):
    import reproduce.pipeline.run as run_mod
    from reproduce.pipeline.run import run_study
    from reproduce.study import load_study

    monkeypatch.chdir(repo)
    study = load_study(repo / "studies" / "default.yaml")
    victim, other = CELLS[1], CELLS[0]
    real_target = run_mod.stage_target
    # Break one cell's job: its dvc repro is pointed at a stage that does not exist.
    monkeypatch.setattr(run_mod, "stage_target", lambda f, c: real_target(f, c + "-nope" if c == victim else c))
    rc = run_study(study, study_path="studies/default.yaml", executor="debug", jobs=None, slurm={}, root=repo)
    out = capsys.readouterr().out
    assert rc == 1
    log = f".reproduce/logs/default/{victim}.log"
    assert f"FAILED {victim}: dvc repro exited with" in out and f"log: {log}" in out, out
    assert (repo / log).exists() and f"{other}: done" in out
    monkeypatch.setattr(run_mod, "stage_target", real_target)
    rc = run_study(study, study_path="studies/default.yaml", executor="debug", jobs=None, slurm={}, root=repo)
    out = capsys.readouterr().out
    assert rc == 0
    assert f"{len(CELLS)} cells, 1 already done, 1 to run" in out
    assert f"{victim}: running" in out and f"{other}: running" not in out
    assert_dvc_repro_only_restores(repo, CELLS, env_for(repo))


def test_run_refuses_a_study_file_the_pipeline_does_not_read(tmp_path):
    (tmp_path / "nodata").mkdir()
    repo = make_repo_copy(tmp_path / "repo", study_text(name="default"), tmp_path / "nodata")
    other = tmp_path / "elsewhere" / "default.yaml"
    other.parent.mkdir()
    other.write_text((repo / "studies" / "default.yaml").read_text())
    proc = run(["reproduce", "run", str(other), "--executor", "debug"], repo, check=False)
    assert proc.returncode != 0 and "reads studies/default.yaml" in proc.stderr
    assert not (repo / ".reproduce" / "workspaces").exists()
