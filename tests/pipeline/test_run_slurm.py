"""`reproduce run --executor slurm` against a real one-node SLURM cluster (Debian's slurmctld + slurmd +
munge on localhost, started by the test): the study's cells run as a job array, one job cancelled
mid-run with scancel is reported and a rerun finishes only that cell, and the main workspace's plain
`dvc repro` afterwards restores every cell from the shared cache and runs nothing else but the report."""

from __future__ import annotations

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
from tests.pipeline.slurm_cluster import ClusterUnavailable, SlurmCluster, ensure_installed

SEEDS = (0, 1)
EPS = (8,)
CELLS = cells_of(SEEDS, EPS)


@pytest.fixture
def cluster(tmp_path):
    try:
        ensure_installed()
    except ClusterUnavailable as e:
        pytest.skip(str(e))
    with SlurmCluster(tmp_path / "slurm") as c:
        yield c


@pytest.mark.slow
def test_run_slurm_job_array_cancel_and_rerun_only_the_cancelled_cell(tmp_path, tmp_path_factory, cluster):
    repo = make_repo_copy(
        tmp_path / "repo",
        study_text(name="default", seed=SEEDS, epsilon=EPS),
        embedded_data(tmp_path_factory.getbasetemp()),
    )
    env = env_for(repo, {"SLURM_CONF": str(cluster.conf)})
    cmd = [
        "reproduce",
        "run",
        "studies/default.yaml",
        "--executor",
        "slurm",
        "--jobs",
        "2",
        "--slurm-partition",
        cluster.partition,
        "--time",
        "00:10:00",
        "--mem",
        "1G",
    ]
    victim, survivor = CELLS
    submitter = subprocess.Popen(cmd, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120

        def victim_state():
            assert time.monotonic() < deadline and submitter.poll() is None, (
                f"the victim never ran:\n{submitter.stdout.read() if submitter.poll() is not None else ''}\n{cluster.logs()}"
            )
            job = record(repo, victim).get("job_id")
            return job, cluster.run("squeue", "-h", "-j", job, "-o", "%T").strip() if job else None

        log = f".reproduce/logs/default/{victim}.log"
        while (state := victim_state())[1] != "RUNNING" or not (repo / log).exists():
            time.sleep(0.3)
        job = state[0]
        assert "_" in job  # a member of the study's job array
        cluster.run("scancel", job)  # mid-run: the cell takes several seconds
        out, _ = submitter.communicate(timeout=240)
    finally:
        if submitter.poll() is None:
            submitter.kill()
    assert submitter.returncode == 1, out
    assert f"FAILED {victim}: job {job} cancelled" in out and f"log: {log}" in out, out
    assert (repo / log).exists()
    assert f"{survivor}: done" in out and record(repo, survivor)["state"] == "done", out

    # The rerun submits the cancelled cell only.
    out = run(cmd, repo, env=env, timeout=300).stdout
    assert f"{len(CELLS)} cells, 1 already done, 1 to run" in out, out
    assert f"{victim}: done" in out and f"{survivor}:" not in out, out
    assert record(repo, victim)["job_id"] != job
    assert "nothing to run" in run(cmd, repo, env=env).stdout

    # Every cell's result arrived; the main workspace restores them all and runs nothing else but the report.
    assert assert_dvc_repro_only_restores(repo, CELLS, env)  # and the report ran
