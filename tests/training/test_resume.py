"""Determinism and kill-and-resume: fresh processes and SIGKILLed runs give bit-identical metrics."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, study_text

# One DP cell with K = 2 views and EMA: 4 epochs of 5 steps, long enough to be killed mid-way.
STUDY = study_text(
    name="resume",
    model={"widths": [4, 4, 8]},
    training={"optimizer": {"lr": 0.2}, "epochs": 4, "max_train_samples": 320, "ema_decay": 0.9},
    epsilon=8,
    multiplicity=2,
)
CELL = "embedded-e-8-2-0"
# Timings differ between runs by nature: they are in run.json, so result.json must be byte-identical.


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("resume")
    (d / "studies").mkdir()
    (d / "studies" / "resume.yaml").write_text(STUDY)
    if (REPO / "data" / "embedded").is_dir():  # reuse the checkout's generated data when present
        (d / "data").mkdir()
        (d / "data" / "embedded").symlink_to(REPO / "data" / "embedded", target_is_directory=True)
    return d


def _train(d: Path, out: str, *, kill_after: float | None = None):
    cmd = [
        sys.executable,
        "-m",
        "reproduce",
        "train",
        "studies/resume.yaml",
        "--cell",
        CELL,
        "--out",
        out,
        "--quiet",
        "--checkpoint-dir",
        "ckpt",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    if kill_after is None:
        proc = subprocess.run(cmd, cwd=d, env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        return (d / out / "result.json").read_bytes()
    proc = subprocess.Popen(cmd, cwd=d, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(kill_after)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return None


def _comparable(result: bytes) -> bytes:
    metrics = json.loads(result)["metrics"]
    assert metrics["steps"] == 20 and "train_seconds" not in metrics
    return result


@pytest.mark.slow
def test_two_fresh_processes_and_kill_resume_are_bit_identical(workdir):
    d = workdir
    subprocess.run(
        [sys.executable, "-m", "reproduce", "fetch"],
        cwd=d,
        check=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
    )
    a = _comparable(_train(d, "out/a"))
    b = _comparable(_train(d, "out/b"))
    assert a == b  # two fresh processes, same cell and seed: byte-identical result.json (DVC hash)

    rng = random.Random(0)
    ckpt = d / "ckpt" / "resume" / f"{CELL}.ckpt"
    for i in range(3):
        # Kill at a random moment after the first checkpoint exists (or earlier, when it never does).
        _train(d, f"out/k{i}", kill_after=rng.uniform(4.0, 9.0))
        resumed = _comparable(_train(d, f"out/k{i}"))
        assert resumed == a, f"kill #{i} then resume differs"
        assert not ckpt.exists()  # removed once the cell's result is written


@pytest.mark.slow
def test_corrupt_checkpoint_restarts_cleanly_with_a_warning(workdir):
    d = workdir
    subprocess.run(
        [sys.executable, "-m", "reproduce", "fetch"],
        cwd=d,
        check=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
    )
    ckpt = d / "ckpt" / "resume" / f"{CELL}.ckpt"
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    ckpt.write_bytes(b"RPRDCKP1" + b"0" * 64 + b"truncated garbage")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "reproduce",
            "train",
            "studies/resume.yaml",
            "--cell",
            CELL,
            "--out",
            "out/c",
            "--quiet",
            "--checkpoint-dir",
            "ckpt",
        ],
        cwd=d,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert "corrupt or truncated" in proc.stderr
    assert json.loads((d / "out/c/result.json").read_text())["metrics"]["steps"] == 20
