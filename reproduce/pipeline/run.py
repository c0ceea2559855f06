"""``reproduce run``: run a study's pending cells as jobs (in-process, local processes or SLURM).

Each pending cell becomes one job that runs exactly that cell's DVC stage,
``dvc repro --single-item <dvcfile>:train@<cell>``, in its own workspace
(``.reproduce/workspaces/<study>/<cell>/``, see :mod:`reproduce.pipeline.workspace`) whose DVC cache is
the main repository's. A finished job has therefore put the cell's outputs and its run-cache entry in
the shared cache, and a plain ``dvc repro`` in the main workspace afterwards restores every finished
cell ("is cached - skipping run") and only renders the table.

- Which cells to run is DVC's answer (:mod:`reproduce.pipeline.dvc_state`): cells up to date or restorable from
  the run-cache are never submitted; a rerun submits only what is still missing.
- Jobs still running from an earlier ``reproduce run`` (SLURM jobs, or local processes whose
  submitting process died) are watched again, not submitted twice (records in ``.reproduce/jobs``).
- A failed or cancelled job is reported with its cell id and log path; nothing finished is lost,
  since each cell is committed to the cache the moment its own job ends.
- Progress: a line per change of a cell's state (pending/running/done/failed) with the totals.

Executor settings may also come from a user config file (``$REPRODUCE_CONFIG``, else
``$XDG_CONFIG_HOME/reproduce/config.yaml``, else ``~/.config/reproduce/config.yaml``;
``reproduce.user_config``)::

    run:
      jobs: 4
      device: auto          # or cpu, cuda, cuda:1 (reproduce.device; --device and $REPRODUCE_DEVICE win)
      slurm: {partition: gpu, gpus_per_task: 1, cpus_per_task: 8, time: "04:00:00", mem: 16G,
              account: myproj, setup: ["source ~/venvs/reproduce/bin/activate"]}

Command line values win over the file.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
import time
from pathlib import Path
from typing import TextIO


from reproduce.errors import ReproduceError
from reproduce.user_config import SLURM_KEYS, load_user_config  # noqa: F401  (re-exported)
from reproduce.pipeline.executors import FAILED, SUCCEEDED, Handle, make_backend, parse_time_minutes
from reproduce.pipeline.progress import DONE, PENDING, RUNNING, Progress
from reproduce.pipeline.dvc_state import cache_dir, cell_states, pycache_ignored, stage_target
from reproduce.pipeline.workspace import Workspaces, state_dir

__all__ = ["run_study"]

POLL_S = {"debug": 0.0, "local": 1.0, "slurm": 3.0}
class _RunLock:
    """One ``reproduce run`` per study and repository at a time (two would submit the same cells)."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        self.f = open(self.path, "a+")
        try:
            fcntl.flock(self.f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.f.seek(0)
            holder = self.f.read().strip()
            self.f.close()
            raise ReproduceError(f"another `reproduce run` of this study is active ({holder or 'unknown pid'}); "
                                 f"lock {self.path}") from None
        self.f.seek(0)
        self.f.truncate()
        self.f.write(f"pid {os.getpid()}\n")
        self.f.flush()
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.f, fcntl.LOCK_UN)
        self.f.close()


def _ensure_data(study, root: Path, out: TextIO) -> None:
    """Every dataset of the study present in the main workspace (workspaces link to it)."""
    from reproduce.data import prepare_dataset
    for name in study.grid.dataset:
        if (root / "data" / name).exists():
            continue
        print(f"preparing dataset {name} in {root / 'data' / name} (once, shared by every workspace)", file=out)
        prepare_dataset(name, root=root / "data", options=study.data)


def _write_record(path: Path, record: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, path)


def run_study(study, *, study_path: Path | str | None = None, executor: str = "local", jobs: int | None = None,
              slurm: dict | None = None, root: Path | str = ".", stream: TextIO | None = None,
              poll_interval: float | None = None) -> int:
    """Run ``study``'s pending cells with ``executor``; return 0 when every cell is done, else 1.

    ``root`` is the repository (the main workspace); ``study_path`` must be the study file its
    pipeline reads (``studies/<name>.yaml``). ``slurm`` holds partition, gpus_per_task, time, mem
    (and optionally cpus_per_task, account, qos, constraint, setup, additional_parameters).
    """
    from reproduce.study.files import pipeline_path

    out = stream or sys.stdout
    root = Path(root).resolve()
    if not (root / ".dvc").is_dir():
        raise ReproduceError(f"{root} is not a DVC repository: run `reproduce run` from the repository root")
    expected = (root / "studies" / f"{study.name}.yaml").resolve()
    if study_path is not None and Path(study_path).resolve() != expected:
        raise ReproduceError(f"the pipeline of study {study.name!r} reads {expected.relative_to(root)}, not "
                             f"{study_path}: put the study there (and run `reproduce pipeline`)")
    dvcfile = pipeline_path(study)
    if not (root / dvcfile).is_file():
        raise ReproduceError(f"{dvcfile} does not exist: run `reproduce pipeline studies/{study.name}.yaml` first")

    config = load_user_config()
    settings = {**(config.get("slurm") or {}), **{k: v for k, v in (slurm or {}).items() if v is not None}}
    jobs = jobs if jobs is not None else config.get("jobs")
    top = state_dir(root)
    for sub in ("jobs", "logs", "submitit"):
        (top / sub / study.name).mkdir(parents=True, exist_ok=True)

    with _RunLock(top / f"{study.name}.lock"):
        return _run(study, root=root, dvcfile=dvcfile, executor=executor, jobs=jobs, settings=settings, out=out,
                    poll=POLL_S.get(executor, 2.0) if poll_interval is None else poll_interval)


def _run(study, *, root, dvcfile, executor, jobs, settings, out, poll) -> int:
    top = root / ".reproduce"
    cells = [c.id for c in study.cells()]
    backend = make_backend(executor, top / "submitit" / study.name, jobs=jobs, slurm=settings, study=study.name)
    progress = Progress(cells, stream=out)
    if not pycache_ignored(root):
        print("warning: .dvcignore does not ignore __pycache__/: Python bytecode next to the code changes the "
              "hash of the code dependencies, so cells finished in workspaces may not be recognised here. "
              "Add `__pycache__/` to .dvcignore.", file=out)
    _ensure_data(study, root, out)

    states = cell_states(root, dvcfile, cells)
    for cell, s in states.items():
        if s != "pending":
            progress.set(cell, DONE, "up to date" if s == "done" else "in the run-cache", quiet=True)
    todo = [c for c in cells if states[c] == "pending"]
    progress.print(f"study {study.name}: {len(cells)} cells, {len(cells) - len(todo)} already done, "
                   f"{len(todo)} to run | executor {backend.describe()}")
    if not todo:
        progress.print(f"nothing to run: `{_repro_target(dvcfile)}` restores every cell from the "
                       "cache and renders the table")
        return 0

    records = top / "jobs" / study.name
    logs = top / "logs" / study.name
    active: dict[str, Handle] = {}
    handles: dict[str, Handle] = {}   # every handle of this run, finished ones too
    # Jobs of an earlier run still going (its submitting process died or was interrupted).
    if backend.detached:
        for cell in todo:
            rec_path = records / f"{cell}.json"
            if rec_path.exists():
                try:
                    rec = json.loads(rec_path.read_text())
                except json.JSONDecodeError:
                    continue
                h = backend.reattach(rec) if rec.get("state") in (PENDING, RUNNING) else None
                if h is not None:
                    active[cell] = handles[cell] = h
                    progress.set(cell, RUNNING, f"job {h.job_id} from an earlier run, log {h.log}")

    queue = [c for c in todo if c not in active]
    workspaces = Workspaces(root, study.name, cache=cache_dir(root))
    failures: dict[str, str] = {}
    start = time.monotonic()

    def spec(cell: str) -> dict:
        ws = workspaces.prepare(cell, list(study.grid.dataset))
        return {"cell": cell, "workspace": str(ws), "target": stage_target(dvcfile, cell),
                "log": str(logs / f"{cell}.log")}

    def submit(batch: list[str]) -> None:
        specs = [spec(c) for c in batch]
        for h in backend.submit(specs):
            active[h.cell] = handles[h.cell] = h
            state = PENDING if backend.batch else RUNNING
            _write_record(records / f"{h.cell}.json", {**h.record(), "executor": backend.name, "state": state,
                                                       "submitted": time.time()})
            progress.set(h.cell, state, f"job {h.job_id}{_on(h)}, log {_rel(h.log, root)}")

    try:
        while queue or active:
            if queue:
                if backend.batch:
                    submit(queue)
                    queue = []
                else:
                    free = (backend.limit or len(queue)) - len(active)
                    if free > 0:
                        submit(queue[:free])
                        queue = queue[free:]
            for cell, (state, detail) in backend.poll(list(active.values())).items():
                h = active[cell]
                if state in (PENDING, RUNNING):
                    if progress.set(cell, state, detail or f"job {h.job_id}{_on(h)}, log {_rel(h.log, root)}"):
                        _write_record(records / f"{cell}.json", {**h.record(), "executor": backend.name, "state": state})
                    continue
                del active[cell]
                final = DONE if state == SUCCEEDED else FAILED
                if final == FAILED:
                    failures[cell] = detail
                _write_record(records / f"{cell}.json", {**h.record(), "executor": backend.name, "state": final,
                                                         "detail": detail})
                progress.set(cell, final, detail if final == FAILED else f"{detail}{_on(h)}, log {_rel(h.log, root)}")
            if active and poll:
                time.sleep(poll)
    except KeyboardInterrupt:
        if backend.detached and backend.name == "slurm":
            progress.print(f"interrupted: {len(active)} SLURM job(s) keep running "
                           f"({', '.join(h.job_id for h in active.values())}); rerun `reproduce run` to watch them "
                           "(finished cells are never resubmitted), or scancel them")
        else:
            for h in active.values():
                h.cancel()
            progress.print(f"interrupted: cancelled {len(active)} running cell(s); finished cells are in the cache, "
                           "rerun to run the rest")
        raise

    # DVC has the last word: a job that "succeeded" without committing its cell is still missing.
    final = cell_states(root, dvcfile, cells)
    missing = [c for c in cells if final[c] == "pending"]
    for cell in missing:
        if cell not in failures:
            failures[cell] = "the job ended but DVC's cache has no run of this cell; log " + str(logs / f"{cell}.log")
            progress.set(cell, FAILED, failures[cell])
    elapsed = time.monotonic() - start
    if missing:
        progress.print(f"{len(cells) - len(missing)}/{len(cells)} cells done, {len(missing)} failed "
                       f"({elapsed:.0f} s):")
        for cell in missing:
            log = logs / f"{cell}.log"
            job_log = (handles[cell].job_log if cell in handles else None)
            if not log.exists() and job_log and Path(job_log).exists():
                log = Path(job_log)     # the job ended before the cell's own log began: SLURM's/submitit's
            print(f"  FAILED {cell}: {failures[cell].splitlines()[0]}\n    log: {_rel(log, root)}", file=out)
        print("rerun the same command to submit only the missing cells", file=out, flush=True)
        return 1
    progress.print(f"all {len(cells)} cells done ({elapsed:.0f} s): `{_repro_target(dvcfile)}` now restores "
                   "them from the cache and renders the table")
    return 0


def _on(handle: Handle) -> str:
    """Where a cell runs, for the live summary (local jobs given a GPU)."""
    return f" on GPU {handle.gpu}" if handle.gpu is not None else ""


def _repro_target(dvcfile: Path) -> str:
    return "dvc repro" if str(dvcfile) == "dvc.yaml" else f"dvc repro {dvcfile.as_posix()}"


def _rel(path: Path | str, root: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(root))
    except ValueError:
        return str(path)
