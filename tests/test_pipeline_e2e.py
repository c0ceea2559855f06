"""End to end: a tiny study through the real `dvc repro` in a temporary copy of the repository."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, TINY_STUDY

BIN = Path(sys.executable).parent


def _run(args, cwd, check=True):
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(cwd)}
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture
def repo_copy(tmp_path):
    """Tracked files of this repository in a fresh git repo, with the tiny study as the default."""
    files = _run(["git", "ls-files", "-z"], REPO).stdout.split("\0")
    dst = tmp_path / "repo"
    for f in filter(None, files):
        src = REPO / f
        if src.is_file():
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / f)
    (dst / "studies" / "default.yaml").write_text(TINY_STUDY.format(name="default"))
    # Share the generated dataset when the main checkout has it (saves regenerating it).
    if (REPO / "data" / "embedded").is_dir():
        shutil.copytree(REPO / "data" / "embedded", dst / "data" / "embedded")
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "copy"]):
        _run(cmd, dst)
    return dst


@pytest.mark.slow
def test_dvc_repro_runs_the_study_caches_and_reruns_only_edited_cells(repo_copy):
    r = repo_copy
    _run(["reproduce", "fetch"], r)
    out = _run(["dvc", "repro"], r).stdout
    assert out.count("Running stage 'train@") == 2
    table = (r / "results/default/table.md").read_text()
    assert "| embedded | e |" in table and "DP eps=8" in table and "non-DP" in table
    result = json.loads((r / "results/default/cells/embedded-e-8-1-0/result.json").read_text())
    assert result["privacy"]["private"] and result["privacy"]["epsilon_spent"] <= 8.0
    assert result["privacy"]["steps"] == 4   # 1 epoch at q = 64/256
    assert result["provenance"]["data"]["sha256"]
    metrics = _run(["dvc", "metrics", "show", "--json"], r).stdout
    assert "summary.json" in metrics
    assert (r / "reports/default/index.html").stat().st_size > 1000

    # Nothing changed: nothing reruns.
    assert "Running stage" not in _run(["dvc", "repro"], r).stdout

    # Edit one seed: dvc status names exactly the new cells, repro runs only them and the table.
    study = r / "studies/default.yaml"
    study.write_text(study.read_text().replace("seed: [0]", "seed: [0, 1]"))
    status = _run(["dvc", "status", "dvc.yaml"], r).stdout
    changed = sorted(line.rstrip(":") for line in status.splitlines() if line and not line[0].isspace())
    assert changed == ["report", "train@embedded-e-8-1-1", "train@embedded-e-non-private-1-1"]
    out = _run(["dvc", "repro"], r).stdout
    ran = sorted(line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage"))
    assert ran == ["report", "train@embedded-e-8-1-1", "train@embedded-e-non-private-1-1"]
