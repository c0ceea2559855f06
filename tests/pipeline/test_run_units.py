"""Fast tests of `reproduce run`'s parts: workspaces, job results, reattaching, progress, settings."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from reproduce.errors import ReproduceError
from reproduce.pipeline.dvc_state import pycache_ignored, stage_target
from reproduce.pipeline.executors import FAILED, SUCCEEDED, LocalBackend, _read_result, make_backend, parse_time_minutes
from reproduce.pipeline.progress import Progress
from reproduce.pipeline.workspace import Workspaces, state_dir
from reproduce.user_config import load_user_config
from tests.conftest import REPO


def _git(cwd, *args):
    subprocess.run(
        ["git", "-c", "user.email=t@t", "-c", "user.name=t", *args], cwd=cwd, check=True, capture_output=True
    )


@pytest.fixture
def small_repo(tmp_path):
    r = tmp_path / "main"
    (r / "pkg").mkdir(parents=True)
    (r / "pkg" / "a.py").write_text("A = 1\n")
    (r / "pkg" / "gone.py").write_text("x = 1\n")
    (r / ".gitignore").write_text("ignored.txt\n")
    (r / "dvc.lock").write_text("main's lock\n")
    (r / ".dvc").mkdir()
    (r / ".dvc" / "config").write_text("[core]\n    autostage = true\n")
    _git(r, "init", "-q")
    _git(r, "add", "-A")
    _git(r, "commit", "-qm", "init")
    (r / "data" / "embedded").mkdir(parents=True)
    (r / "data" / "embedded" / "embedded.npz").write_bytes(b"data" * 100)
    return r


def test_run_workspace_is_a_worktree_with_the_main_working_tree_and_shared_cache(small_repo, tmp_path):
    r = small_repo
    (r / "pkg" / "a.py").write_text("A = 2  # uncommitted edit\n")
    (r / "pkg" / "new.py").write_text("untracked = True\n")
    (r / "pkg" / "gone.py").unlink()
    (r / "ignored.txt").write_text("never copied\n")
    cache = tmp_path / "cache"
    ws = Workspaces(r, "s", cache=cache).prepare("cell-1", ["embedded"])
    assert ws == r / ".reproduce" / "workspaces" / "s" / "cell-1"
    assert (ws / "pkg" / "a.py").read_text() == "A = 2  # uncommitted edit\n"
    assert (ws / "pkg" / "new.py").exists() and not (ws / "pkg" / "gone.py").exists()
    assert not (ws / "ignored.txt").exists()
    # A worktree at the main HEAD: provenance in the workspace sees the commit and the dirty state.
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=r, capture_output=True, text=True).stdout
    assert subprocess.run(["git", "rev-parse", "HEAD"], cwd=ws, capture_output=True, text=True).stdout == head
    assert "pkg/a.py" in subprocess.run(["git", "status", "--porcelain"], cwd=ws, capture_output=True, text=True).stdout
    local = (ws / ".dvc" / "config.local").read_text()
    assert f"dir = {cache.resolve().as_posix()}" in local and "no_scm = true" in local
    data = ws / "data" / "embedded" / "embedded.npz"
    assert os.path.samefile(data, r / "data" / "embedded" / "embedded.npz")
    # git ignores .reproduce/ (it never shows up as untracked in the main repository)
    assert (
        ".reproduce"
        not in subprocess.run(["git", "status", "--porcelain"], cwd=r, capture_output=True, text=True).stdout
    )


def test_run_workspace_refresh_follows_edits_and_keeps_its_own_files(small_repo, tmp_path):
    r = small_repo
    spaces = Workspaces(r, "s", cache=tmp_path / "cache")
    ws = spaces.prepare("c", [])
    (ws / "dvc.lock").write_text("the workspace's own lock\n")
    (ws / "checkpoints").mkdir()
    (ws / "checkpoints" / "c.ckpt").write_text("resume me")
    (r / "pkg" / "extra.py").write_text("x = 1\n")
    ws = Workspaces(r, "s", cache=tmp_path / "cache").prepare("c", [])
    assert (ws / "pkg" / "extra.py").exists()
    assert (ws / "dvc.lock").read_text() == "the workspace's own lock\n"
    (r / "pkg" / "extra.py").unlink()
    (r / "pkg" / "a.py").write_text("A = 3\n")
    _git(r, "commit", "-qam", "second")  # HEAD moves: the workspace follows
    ws = Workspaces(r, "s", cache=tmp_path / "cache").prepare("c", [])
    assert not (ws / "pkg" / "extra.py").exists()
    assert (ws / "pkg" / "a.py").read_text() == "A = 3\n"
    assert (
        subprocess.run(["git", "status", "--porcelain", "--", "pkg"], cwd=ws, capture_output=True, text=True).stdout
        == ""
    )
    assert (ws / "checkpoints" / "c.ckpt").read_text() == "resume me"


def test_run_workspace_without_git_is_a_copy(tmp_path):
    r = tmp_path / "plain"
    (r / "pkg" / "__pycache__").mkdir(parents=True)
    (r / "pkg" / "a.py").write_text("A = 1\n")
    (r / "pkg" / "__pycache__" / "a.pyc").write_bytes(b"x")
    (r / "results").mkdir()
    (r / "results" / "r.json").write_text("{}")
    ws = Workspaces(r, "s", cache=tmp_path / "cache").prepare("c", [])
    assert (ws / "pkg" / "a.py").exists()
    assert not (ws / "pkg" / "__pycache__").exists() and not (ws / "results").exists()
    assert not (ws / ".reproduce").exists()


def test_run_missing_dataset_is_a_clear_error(small_repo, tmp_path):
    with pytest.raises(ReproduceError, match="reproduce fetch cifar10"):
        Workspaces(small_repo, "s", cache=tmp_path / "c").prepare("c", ["cifar10"])


def test_run_result_pickles_read_as_outcomes(tmp_path):
    from submitit.core.utils import cloudpickle_dump

    ok, err = tmp_path / "ok.pkl", tmp_path / "err.pkl"
    cloudpickle_dump(("success", {"seconds": 12.3, "host": "node1"}), ok)
    tb = (
        "Traceback (most recent call last):\n  File x\nreproduce.run.executors.CellFailed: dvc repro exited with 1;"
        " log /x/c.log:\nERROR: boom\n"
    )
    cloudpickle_dump(("error", tb), err)
    assert _read_result(ok) == (SUCCEEDED, "12 s on node1")
    assert _read_result(err) == (FAILED, "dvc repro exited with 1; log /x/c.log:")
    assert _read_result(tmp_path / "none.pkl") is None
    (tmp_path / "bad.pkl").write_bytes(b"truncated")
    assert _read_result(tmp_path / "bad.pkl")[0] == FAILED


def test_run_local_jobs_of_a_dead_submitter_are_reattached_while_alive(tmp_path):
    import psutil

    backend = LocalBackend(tmp_path / "submitit", jobs=2)
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        rec = {
            "executor": "local",
            "cell": "c",
            "job_id": str(proc.pid),
            "log": str(tmp_path / "c.log"),
            "result_pickle": str(tmp_path / "r.pkl"),
            "create_time": psutil.Process(proc.pid).create_time(),
        }
        handle = backend.reattach(rec)
        assert handle is not None and handle.poll() == ("running", "")
        # Same pid, another process (pid reuse): not ours.
        assert backend.reattach({**rec, "create_time": rec["create_time"] - 100}) is None
        proc.kill()
        proc.wait()
        state, detail = handle.poll()
        assert state == FAILED and "without a result" in detail and "c.log" in detail
        assert backend.reattach(rec) is None
    finally:
        proc.kill()


def test_run_progress_prints_a_line_per_change_with_totals():
    stream = io.StringIO()
    p = Progress(["a", "b", "c"], stream=stream)
    p.set("a", "done", "cached", quiet=True)
    assert p.set("b", "running", "job 1, log x.log")
    assert not p.set("b", "running", "job 1, log x.log")  # no change, no line
    p.set("b", "failed", "job 1 cancelled; log x.log")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[-1].endswith("b: failed (job 1 cancelled; log x.log) | pending 1, running 0, done 1/3, failed 1")


def test_run_settings_time_limits_targets_and_config(tmp_path, monkeypatch):
    assert [parse_time_minutes(t) for t in ("90", "04:00:00", "30:00", "1-12", "1-00:30:00", "00:00:30")] == [
        90,
        240,
        30,
        36 * 60,
        24 * 60 + 30,
        1,
    ]
    assert parse_time_minutes(None) is None
    with pytest.raises(ReproduceError):
        parse_time_minutes("1:2:3:4")
    assert (
        stage_target(Path("pipelines/x/dvc.yaml"), "embedded-e-8-1-0") == "pipelines/x/dvc.yaml:train@embedded-e-8-1-0"
    )
    cfg = tmp_path / "config.yaml"
    cfg.write_text("run:\n  jobs: 3\n  slurm: {partition: gpu, time: '02:00:00', setup: ['module load x']}\n")
    monkeypatch.setenv("REPRODUCE_CONFIG", str(cfg))
    assert load_user_config() == {
        "jobs": 3,
        "slurm": {"partition": "gpu", "time": "02:00:00", "setup": ["module load x"]},
    }
    cfg.write_text("run:\n  slurm: {partiton: gpu}\n")
    with pytest.raises(ReproduceError, match="partiton"):
        load_user_config()
    monkeypatch.setenv("REPRODUCE_CONFIG", str(tmp_path / "absent.yaml"))
    assert load_user_config() == {}
    with pytest.raises(ReproduceError, match="at least 1"):
        make_backend("local", tmp_path, jobs=0, slurm=None, study="s")
    assert make_backend("local", tmp_path, jobs=None, slurm=None, study="s").limit == (os.cpu_count() or 1)


def test_run_state_dir_keeps_git_out(tmp_path):
    d = state_dir(tmp_path)
    assert (d / ".gitignore").read_text().splitlines()[-1] == "*"


def test_run_dvcignore_ignores_bytecode():
    """Workspaces and the main workspace must hash the code dependencies alike: DVC hashes every file
    of a directory dependency, so __pycache__ (which differs between them) must be in .dvcignore."""
    assert pycache_ignored(REPO), "add `__pycache__/` to .dvcignore"


def test_gpu_slots_spread_jobs_over_the_visible_gpus():
    from reproduce.pipeline.executors import GpuSlots

    slots = GpuSlots(["0", "1"])
    assert [slots.take(j, alive={"a", "b", "c", "d"}) for j in "abcd"] == ["0", "1", "0", "1"]
    # a and c (GPU 0) finished: the next two jobs go to GPU 0
    assert [slots.take(j, alive={"b", "d", "e", "f"}) for j in "ef"] == ["0", "0"]
    assert GpuSlots([]).take("x", alive=set()) is None


def test_visible_gpus_follow_cuda_visible_devices(monkeypatch):
    from reproduce.pipeline.executors import visible_gpus

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")
    assert visible_gpus() == ["2", "5"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert visible_gpus() == []


def test_local_backend_runs_jobs_per_gpu(monkeypatch, tmp_path):
    from reproduce.pipeline.executors import LocalBackend

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    backend = LocalBackend(tmp_path, jobs=3)
    assert backend.limit == 6 and "GPU(s) 0,1" in backend.describe()


def test_a_job_sees_only_its_gpu(tmp_path, monkeypatch):
    """run_cell_job hands its GPU to the stage's process as CUDA_VISIBLE_DEVICES."""
    import subprocess as sp

    from reproduce.pipeline import executors

    seen = {}

    def fake_run(cmd, *, env, **kw):
        seen.update(env)
        return sp.CompletedProcess(cmd, 0)

    monkeypatch.setattr(executors.subprocess, "run", fake_run)
    out = executors.run_cell_job(str(tmp_path), "train@x", str(tmp_path / "log"), 2, "1")
    assert seen["CUDA_VISIBLE_DEVICES"] == "1" and out["gpu"] == "1"
    assert "gpu 1" in (tmp_path / "log").read_text()
