"""Helpers for the `reproduce run` tests: a throwaway copy of this repository with a tiny default study."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

BIN = Path(sys.executable).parent


def cells_of(seeds=(0,), epsilons=("non-private", 8)) -> list[str]:
    return [f"embedded-e-{eps}-1-{seed}" for eps in epsilons for seed in seeds]


def env_for(repo: Path, extra: dict | None = None) -> dict:
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(repo), **(extra or {})}


def run(args, cwd: Path, *, env: dict | None = None, check: bool = True, timeout: float = 600):
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, env=env or env_for(cwd), timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def embedded_data(base: Path) -> Path:
    """A directory holding the embedded dataset: the main checkout's, else generated once per session."""
    if (REPO / "data" / "embedded").is_dir() and any((REPO / "data" / "embedded").iterdir()):
        return REPO / "data" / "embedded"
    shared = base / "embedded-shared"
    shared.mkdir(parents=True, exist_ok=True)
    with open(shared / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (shared / "embedded").is_dir():
            run([sys.executable, "-m", "reproduce", "fetch", "--root", str(shared / "tmp")], REPO, env=env_for(REPO))
            os.replace(shared / "tmp" / "embedded", shared / "embedded")
    return shared / "embedded"


def make_repo_copy(dst: Path, study_text: str, data: Path, *, study: str = "default") -> Path:
    """This repository's files (tracked, and untracked-not-ignored) in a fresh git repo with ``study_text``
    as study ``study`` (default: the default study) and the embedded dataset under data/embedded."""
    files = run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], REPO, env=env_for(REPO)
    ).stdout.split("\0")
    for f in filter(None, files):
        src = REPO / f
        dataset_file = f.startswith("data/") and f.count("/") >= 2  # data/<name>/...: linked below
        if src.is_file() and not f.startswith(".reproduce/") and not dataset_file:
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / f)
    (dst / "studies" / f"{study}.yaml").write_text(study_text)
    # The committed lock and results are the real study's, not this one's.
    (dst / ("dvc.lock" if study == "default" else f"pipelines/{study}/dvc.lock")).unlink(missing_ok=True)
    shutil.rmtree(dst / "results" / study, ignore_errors=True)
    for cmd in (
        ["git", "init", "-q"],
        ["git", "add", "-A"],
        ["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "copy"],
    ):
        run(cmd, dst)
    (dst / "data" / "embedded").mkdir(parents=True, exist_ok=True)
    for f in data.iterdir():
        try:
            os.link(f, dst / "data" / "embedded" / f.name)
        except OSError:
            shutil.copy2(f, dst / "data" / "embedded" / f.name)
    return dst


def record(repo: Path, cell: str) -> dict:
    path = repo / ".reproduce" / "jobs" / "default" / f"{cell}.json"
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def repro_report(repo: Path, env: dict | None = None) -> tuple[list[str], list[str]]:
    """Run the main workspace's plain ``dvc repro``: (stages that ran, train stages restored from cache)."""
    out = run(["dvc", "repro"], repo, env=env).stdout
    ran = sorted(line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage"))
    cached = sorted(line.split("'")[1] for line in out.splitlines() if "is cached - skipping run" in line)
    return ran, cached


def assert_dvc_repro_only_restores(repo: Path, cells: list[str], env: dict | None = None) -> list[str]:
    """The main workspace's plain ``dvc repro`` restores every cell from the shared cache and trains none.

    Returns the stages that did run (the report)."""
    ran, cached = repro_report(repo, env)
    assert cached == sorted(f"train@{c}" for c in cells), (cached, ran)
    assert not any(s.startswith("train@") for s in ran), ran
    for cell in cells:
        assert (repo / "results" / "default" / "cells" / cell / "result.json").exists(), cell
    return ran
