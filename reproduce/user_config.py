"""The user's own settings file: how and where this user runs studies, never what a cell means.

``$REPRODUCE_CONFIG``, else ``$XDG_CONFIG_HOME/reproduce/config.yaml``, else
``~/.config/reproduce/config.yaml``; its ``run:`` section holds ``jobs``, ``device`` and ``slurm``
settings (command-line values win over the file).
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from reproduce.atomic import decode_utf8
from reproduce.errors import ReproduceError

RUN_KEYS = ("jobs", "device", "slurm")
SLURM_KEYS = (
    "partition",
    "gpus_per_task",
    "cpus_per_task",
    "time",
    "mem",
    "account",
    "qos",
    "constraint",
    "exclude",
    "setup",
    "additional_parameters",
)


def load_user_config(path: Path | None = None) -> dict:
    """The ``run:`` section of the user's config file ({} when there is none)."""
    if path is None:
        env = os.environ.get("REPRODUCE_CONFIG")
        base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
        path = Path(env) if env else base / "reproduce" / "config.yaml"
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(decode_utf8(path.read_bytes(), path)) or {}
    except yaml.YAMLError as e:
        raise ReproduceError(f"{path}: not valid YAML: {e}") from e
    run = data.get("run", {}) if isinstance(data, dict) else None
    if not isinstance(run, dict):
        raise ReproduceError(f"{path}: `run:` must be a mapping")
    unknown = set(run) - set(RUN_KEYS) | set(run.get("slurm") or {}) - set(SLURM_KEYS)
    if unknown:
        raise ReproduceError(
            f"{path}: unknown setting(s) {sorted(unknown)} (run: {', '.join(RUN_KEYS)}; slurm: {', '.join(SLURM_KEYS)})"
        )
    return run
