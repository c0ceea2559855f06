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

from reproduce.atomic import write_json_atomic
from reproduce.errors import ReproduceError
from reproduce.pipeline.dvc_state import cache_dir, cell_states, pycache_ignored, stage_target
from reproduce.pipeline.executors import FAILED, SUCCEEDED, Handle, make_backend
from reproduce.pipeline.progress import DONE, PENDING, RUNNING, Progress
from reproduce.pipeline.workspace import Workspaces, state_dir
from reproduce.user_config import SLURM_KEYS, load_user_config  # noqa: F401  (re-exported)

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
            raise ReproduceError(
                f"another `reproduce run` of this study is active ({holder or 'unknown pid'}); lock {self.path}"
            ) from None
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


def run_study(
    study,
    *,
    study_path: Path | str | None = None,
    executor: str = "local",
    jobs: int | None = None,
    slurm: dict | None = None,
    root: Path | str = ".",
    stream: TextIO | None = None,
    poll_interval: float | None = None,
) -> int:
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
        raise ReproduceError(
            f"the pipeline of study {study.name!r} reads {expected.relative_to(root)}, not "
            f"{study_path}: put the study there (and run `reproduce pipeline`)"
        )
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
        return _run(
            study,
            root=root,
            dvcfile=dvcfile,
            executor=executor,
            jobs=jobs,
            settings=settings,
            out=out,
            poll=POLL_S.get(executor, 2.0) if poll_interval is None else poll_interval,
        )


def _run(study, *, root, dvcfile, executor, jobs, settings, out, poll) -> int:
    run = _StudyRun(
        study,
        root=root,
        dvcfile=dvcfile,
        out=out,
        backend=make_backend(
            executor, root / ".reproduce" / "submitit" / study.name, jobs=jobs, slurm=settings, study=study.name
        ),
    )
    todo = run.pending()
    if not todo:
        return 0
    run.reattach(todo)
    run.queue = [c for c in todo if c not in run.active]
    try:
        while run.queue or run.active:
            run.submit_what_fits()
            run.poll_once()
            if run.active and poll:
                time.sleep(poll)
    except KeyboardInterrupt:
        run.interrupted()
        raise
    return run.finish()


class _StudyRun:
    """One ``reproduce run`` of a study, phase by phase: what is pending, jobs of an earlier run, submission
    as the backend has room, polling, and DVC's verdict at the end. Each job's state is recorded in
    ``.reproduce/jobs/<study>/<cell>.json`` (so a later run watches it again instead of resubmitting)."""

    def __init__(self, study, *, root: Path, dvcfile: Path, out: TextIO, backend):
        self.study, self.root, self.dvcfile, self.out, self.backend = study, root, dvcfile, out, backend
        self.cells = [c.id for c in study.cells()]
        self.progress = Progress(self.cells, stream=out)
        self.records = root / ".reproduce" / "jobs" / study.name
        self.logs = root / ".reproduce" / "logs" / study.name
        self.active: dict[str, Handle] = {}
        self.handles: dict[str, Handle] = {}  # every handle of this run, finished ones too
        self.failures: dict[str, str] = {}
        self.queue: list[str] = []
        self.start = time.monotonic()
        self.workspaces = Workspaces(root, study.name, cache=cache_dir(root))

    def pending(self) -> list[str]:
        """The cells DVC says still have to run (the others are marked done); data prepared first."""
        if not pycache_ignored(self.root):
            print(
                "warning: .dvcignore does not ignore __pycache__/: Python bytecode next to the code changes the "
                "hash of the code dependencies, so cells finished in workspaces may not be recognised here. "
                "Add `__pycache__/` to .dvcignore.",
                file=self.out,
            )
        _ensure_data(self.study, self.root, self.out)
        states = cell_states(self.root, self.dvcfile, self.cells)
        for cell, s in states.items():
            if s != "pending":
                self.progress.set(cell, DONE, "up to date" if s == "done" else "in the run-cache", quiet=True)
        todo = [c for c in self.cells if states[c] == "pending"]
        self.progress.print(
            f"study {self.study.name}: {len(self.cells)} cells, {len(self.cells) - len(todo)} "
            f"already done, {len(todo)} to run | executor {self.backend.describe()}"
        )
        if not todo:
            self.progress.print(
                f"nothing to run: `{_repro_target(self.dvcfile)}` restores every cell from the "
                "cache and renders the table"
            )
        return todo

    def reattach(self, todo: list[str]) -> None:
        """Watch again the jobs of an earlier run that are still going (its submitting process died or was
        interrupted)."""
        if not self.backend.detached:
            return
        for cell in todo:
            rec_path = self.records / f"{cell}.json"
            if not rec_path.exists():
                continue
            try:
                rec = json.loads(rec_path.read_text())
            except json.JSONDecodeError:
                continue
            h = self.backend.reattach(rec) if rec.get("state") in (PENDING, RUNNING) else None
            if h is not None:
                self.active[cell] = self.handles[cell] = h
                self.progress.set(cell, RUNNING, f"job {h.job_id} from an earlier run, log {h.log}")

    def _record(self, cell: str, handle: Handle, **fields) -> None:
        write_json_atomic(self.records / f"{cell}.json", {**handle.record(), "executor": self.backend.name, **fields})

    def _where(self, h: Handle) -> str:
        return f"job {h.job_id}{_on(h)}, log {_rel(h.log, self.root)}"

    def submit_what_fits(self) -> None:
        """Submit the whole queue to a batch backend, else as many cells as the job limit leaves room for."""
        if not self.queue:
            return
        free = len(self.queue) if self.backend.batch else (self.backend.limit or len(self.queue)) - len(self.active)
        if free <= 0:
            return
        batch, self.queue = self.queue[:free], self.queue[free:]
        specs = [
            {
                "cell": c,
                "workspace": str(self.workspaces.prepare(c, list(self.study.grid.dataset))),
                "target": stage_target(self.dvcfile, c),
                "log": str(self.logs / f"{c}.log"),
            }
            for c in batch
        ]
        for h in self.backend.submit(specs):
            self.active[h.cell] = self.handles[h.cell] = h
            state = PENDING if self.backend.batch else RUNNING
            self._record(h.cell, h, state=state, submitted=time.time())
            self.progress.set(h.cell, state, self._where(h))

    def poll_once(self) -> None:
        """One look at every active job: record state changes, retire finished jobs."""
        for cell, (state, detail) in self.backend.poll(list(self.active.values())).items():
            h = self.active[cell]
            if state in (PENDING, RUNNING):
                if self.progress.set(cell, state, detail or self._where(h)):
                    self._record(cell, h, state=state)
                continue
            del self.active[cell]
            final = DONE if state == SUCCEEDED else FAILED
            if final == FAILED:
                self.failures[cell] = detail
            self._record(cell, h, state=final, detail=detail)
            self.progress.set(
                cell, final, detail if final == FAILED else f"{detail}{_on(h)}, log {_rel(h.log, self.root)}"
            )

    def interrupted(self) -> None:
        """Ctrl-C: SLURM jobs keep running (a rerun watches them); local ones are cancelled."""
        if self.backend.detached and self.backend.name == "slurm":
            self.progress.print(
                f"interrupted: {len(self.active)} SLURM job(s) keep running "
                f"({', '.join(h.job_id for h in self.active.values())}); rerun `reproduce run` to "
                "watch them (finished cells are never resubmitted), or scancel them"
            )
            return
        for h in self.active.values():
            h.cancel()
        self.progress.print(
            f"interrupted: cancelled {len(self.active)} running cell(s); finished cells are in the "
            "cache, rerun to run the rest"
        )

    def finish(self) -> int:
        """DVC has the last word: a job that "succeeded" without committing its cell is still missing."""
        final = cell_states(self.root, self.dvcfile, self.cells)
        missing = [c for c in self.cells if final[c] == "pending"]
        for cell in missing:
            if cell not in self.failures:
                self.failures[cell] = "the job ended but DVC's cache has no run of this cell; log " + str(
                    self.logs / f"{cell}.log"
                )
                self.progress.set(cell, FAILED, self.failures[cell])
        elapsed = time.monotonic() - self.start
        n = len(self.cells)
        if not missing:
            self.progress.print(
                f"all {n} cells done ({elapsed:.0f} s): `{_repro_target(self.dvcfile)}` now "
                "restores them from the cache and renders the table"
            )
            return 0
        self.progress.print(f"{n - len(missing)}/{n} cells done, {len(missing)} failed ({elapsed:.0f} s):")
        for cell in missing:
            log = self.logs / f"{cell}.log"
            job_log = self.handles[cell].job_log if cell in self.handles else None
            if not log.exists() and job_log and Path(job_log).exists():
                log = Path(job_log)  # the job ended before the cell's own log began: SLURM's/submitit's
            print(
                f"  FAILED {cell}: {self.failures[cell].splitlines()[0]}\n    log: {_rel(log, self.root)}",
                file=self.out,
            )
        print("rerun the same command to submit only the missing cells", file=self.out, flush=True)
        return 1


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
