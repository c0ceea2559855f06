"""Provenance recorded with every result: what code, data, study and environment produced it.

Two records, because DVC compares outputs by hash: ``Provenance`` goes into the cached, versioned
``result.json`` and holds only what an identical rerun reproduces (study, cell, seed, data, package
versions, device); ``RunRecord`` holds what changes from run to run with the same numbers (wall time,
finish time, commit, dirty flag, host) and is written beside it as ``run.json``, which
neither git nor DVC tracks (the code a result came from is the dependency hashes in ``dvc.lock``).
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib.metadata
import platform
import subprocess
from pathlib import Path
from typing import Any

PACKAGES = ("torch", "opacus", "escnn", "numpy", "scikit-learn", "pydantic", "dvc")
# Paths whose uncommitted edits make a result not reproducible from the recorded commit.
CODE_PATHS = ("reproduce", "studies", "pyproject.toml", "dvc.yaml")


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], capture_output=True, text=True, timeout=10, cwd=Path(__file__).resolve().parents[2]
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_state() -> dict:
    commit = _git("rev-parse", "HEAD")
    dirty = _git("status", "--porcelain", "--", *CODE_PATHS)
    return {"commit": commit, "dirty": bool(dirty) if dirty is not None else None}


def versions() -> dict:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


@dataclasses.dataclass(frozen=True)
class DataProvenance:
    """Which dataset file a result was trained and evaluated on."""

    name: str
    sha256: str
    source: str


@dataclasses.dataclass(frozen=True)
class Provenance:
    """What produced a result and is the same on every identical rerun: study file, cell, data, packages."""

    study: str
    study_sha256: str | None
    cell: str
    seed: int
    data: DataProvenance
    versions: dict[str, str | None]
    device: dict[str, Any] | str  # reproduce.device.device_facts (a plain "cpu" in older results)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> Provenance:
        return cls(**{**record, "data": DataProvenance(**record["data"])})


@dataclasses.dataclass(frozen=True)
class RunRecord:
    """How one run of a cell went, which a bit-identical rerun changes: ``run.json``, never versioned."""

    train_seconds: float
    samples_per_second: float
    finished_utc: str
    commit: str | None
    dirty: bool | None  # uncommitted edits under CODE_PATHS; None when git could not tell
    platform: str

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def run_record(*, seconds: float, seen: int) -> RunRecord:
    """This run's timings (``seen`` samples in ``seconds`` of training) and host facts."""
    return RunRecord(
        train_seconds=round(seconds, 3),
        samples_per_second=round(seen / seconds, 1) if seconds else 0.0,
        finished_utc=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        **git_state(),
        platform=platform.platform(),
    )
