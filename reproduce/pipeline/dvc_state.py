"""Which cells of a study are done, asked of DVC itself (never of our own bookkeeping).

A cell is done when its ``train@<cell>`` stage is up to date in the main workspace, or when DVC's
run-cache holds a run of exactly that stage (same command, dependency hashes and params) whose
outputs are in the cache - then ``dvc repro`` restores it instead of training ("is cached - skipping
run"). Workspaces share the main repository's cache, so a cell finished anywhere counts here the
moment its job's ``dvc repro`` has committed it.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path

from reproduce.errors import ReproduceError

TRAIN_STAGE = "train"


def stage_target(dvcfile: Path | str, cell_id: str) -> str:
    """The ``dvc repro`` target of one cell, e.g. ``pipelines/x/dvc.yaml:train@embedded-e-8-1-0``."""
    return f"{Path(dvcfile).as_posix()}:{TRAIN_STAGE}@{cell_id}"


@contextmanager
def _quiet_dvc():
    """DVC logs "Stage ... is cached" while we only ask; keep our output to our own lines."""
    log = logging.getLogger("dvc")
    level = log.level
    log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        log.setLevel(level)


def cell_states(root: Path, dvcfile: Path | str, cell_ids: list[str]) -> dict[str, str]:
    """``{cell_id: "done" | "cached" | "pending"}`` for every cell: up to date in ``root``, restorable
    from the run-cache, or still to run."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo
    from dvc.stage.cache import RunCacheNotFoundError

    out = {c: "pending" for c in cell_ids}
    try:
        with _quiet_dvc(), Repo(str(root)) as repo, repo.lock:
            stages = repo.stage.collect(f"{Path(dvcfile).as_posix()}:{TRAIN_STAGE}")
            by_cell = {s.name.split("@", 1)[1]: s for s in stages if "@" in s.name}
            missing = [c for c in cell_ids if c not in by_cell]
            if missing:
                raise ReproduceError(
                    f"{dvcfile} has no stage for cell(s) {missing[:5]}: the pipeline does not "
                    "match the study (run `reproduce pipeline`)"
                )
            for cell in cell_ids:
                stage = by_cell[cell]
                if not stage.changed():
                    out[cell] = "done"
                    continue
                try:
                    stage.save_deps()  # in memory: the run-cache key needs the current dependency hashes
                    repo.stage_cache.restore(stage, dry=True)
                    out[cell] = "cached"
                except (RunCacheNotFoundError, DvcException, OSError):
                    pass  # missing dependency and the like: not restorable, so still to run
    except DvcException as e:
        raise ReproduceError(f"DVC could not read the pipeline {dvcfile}: {e}") from e
    return out


def cache_dir(root: Path) -> Path:
    """The main repository's DVC cache directory (honouring a ``cache.dir`` it configures)."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return Path(repo.cache.legacy.path).resolve()


def pycache_ignored(root: Path) -> bool:
    """Whether DVC ignores ``__pycache__`` directories in ``root`` (else bytecode changes code hashes)."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        probe = Path(root).resolve() / "reproduce" / "__pycache__"
        return repo.dvcignore.is_ignored_dir(str(probe))
