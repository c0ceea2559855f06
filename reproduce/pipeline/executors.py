"""Where a cell's job runs: in this process (``debug``), in local processes (``local``), or on SLURM.

Every backend runs the same picklable function, :func:`run_cell_job`, through submitit: it calls
``dvc repro --single-item <dvcfile>:train@<cell>`` inside the cell's workspace and appends DVC's
output to the cell's log. What a job leaves behind that matters is in DVC's shared cache; submitit's
result pickle only says how the job ended.

A :class:`Handle` is one submitted cell; ``poll()`` answers ``(state, detail)`` with state one of
``pending``, ``running``, ``succeeded``, ``failed``. Handles can be rebuilt from a job record
(:meth:`Backend.reattach`), so a rerun after the submitting process died watches the jobs still
running instead of submitting those cells again.
"""

from __future__ import annotations

import datetime
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from reproduce.errors import ReproduceError

SUCCEEDED, FAILED = "succeeded", "failed"
# How a job may end without a result pickle: still there for MinJobAge after it ended.
SLURM_PENDING = {
    "PENDING",
    "CONFIGURING",
    "REQUEUED",
    "REQUEUE_FED",
    "REQUEUE_HOLD",
    "RESV_DEL_HOLD",
    "RESIZING",
    "SUSPENDED",
    "STOPPED",
}
SLURM_RUNNING = {"RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING"}
LOG_TAIL_LINES = 12


class CellFailed(RuntimeError):
    """``dvc repro`` of a cell exited non-zero (the message has the exit code and the log's tail)."""


def _tail(path: Path, n: int = LOG_TAIL_LINES) -> str:
    try:
        lines = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-n:])


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES entries (empty without CUDA)."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [g.strip() for g in listed.split(",") if g.strip() and g.strip() != "-1"]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


class GpuSlots:
    """Spread local jobs over GPUs: each new job goes to the GPU running the fewest of them.

    Several small cells share one GPU (``--jobs`` per GPU); a job sees only its GPU
    (CUDA_VISIBLE_DEVICES), so the trainer's ``auto`` device is that GPU.
    """

    def __init__(self, gpus: list[str]):
        self.gpus = list(gpus)
        self.running: dict[str, str] = {}  # job id -> gpu

    def take(self, job: str, alive: set[str]) -> str | None:
        """The GPU for ``job`` (None without GPUs); ``alive``: ids of the jobs still running."""
        if not self.gpus:
            return None
        self.running = {j: g for j, g in self.running.items() if j in alive}
        load = {g: 0 for g in self.gpus}
        for g in self.running.values():
            load[g] += 1
        gpu = min(self.gpus, key=lambda g: load[g])  # ties: the first listed (round robin from empty)
        self.running[job] = gpu
        return gpu


def run_cell_job(workspace: str, target: str, log: str, threads: int | None = None, gpu: str | None = None) -> dict:
    """The job: reproduce one cell's stage in its workspace (runs on the compute node)."""
    env = dict(os.environ)
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # bytecode beside the code would change its DVC hash
    for var in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE"):
        env.pop(var, None)
    cpus = threads or env.get("SLURM_CPUS_PER_TASK") or env.get("SLURM_CPUS_ON_NODE")
    if cpus:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env.setdefault(var, str(cpus))
    cmd = [sys.executable, "-m", "dvc", "repro", "--single-item", target]
    start = time.time()
    Path(log).parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as f:
        stamp = datetime.datetime.now().isoformat(timespec="seconds")
        job = env.get("SLURM_JOB_ID") or env.get("SUBMITIT_LOCAL_JOB_ID") or env.get("SUBMITIT_DEBUG_JOB_ID") or "-"
        where = f" gpu {gpu}" if gpu is not None else ""
        f.write(f"=== {stamp} host {socket.gethostname()}{where} job {job}: cd {workspace} && {shlex.join(cmd[1:])}\n")
        f.flush()
        proc = subprocess.run(cmd, cwd=workspace, env=env, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        f.write(f"=== exit {proc.returncode} after {time.time() - start:.1f} s\n")
    if proc.returncode != 0:
        how = f"killed by signal {-proc.returncode}" if proc.returncode < 0 else f"exited with {proc.returncode}"
        raise CellFailed(f"dvc repro {how}; log {log}:\n{_tail(Path(log))}")
    return {"seconds": time.time() - start, "host": socket.gethostname(), "gpu": gpu}


def _read_result(result_pickle: Path) -> tuple[str, str] | None:
    """``(SUCCEEDED|FAILED, detail)`` from submitit's result pickle, or None while there is none."""
    if not result_pickle.exists():
        return None
    from submitit.core.utils import pickle_load

    try:
        outcome, value = pickle_load(result_pickle)
    except Exception as e:  # noqa: BLE001 - a truncated pickle (node died while writing) is a failure
        return FAILED, f"unreadable job result {result_pickle}: {e}"
    if outcome == "success":
        return SUCCEEDED, f"{value.get('seconds', 0):.0f} s on {value.get('host', '?')}" if isinstance(
            value, dict
        ) else ""
    last = [line for line in str(value).strip().splitlines() if line.strip()]
    reason = next((line.split(": ", 1)[1] for line in last if "CellFailed: " in line), last[-1] if last else "error")
    return FAILED, reason


class Handle:
    """One submitted cell."""

    def __init__(
        self, cell: str, job_id: str, log: Path, result_pickle: Path | None = None, job_log: Path | None = None
    ):
        self.cell, self.job_id, self.log = cell, str(job_id), Path(log)
        self.result_pickle, self.job_log = result_pickle, job_log
        self.submitted = time.monotonic()
        self.gpu: str | None = None  # the GPU a local job was given (CUDA_VISIBLE_DEVICES entry)

    def poll(self) -> tuple[str, str]:
        raise NotImplementedError

    def cancel(self) -> None:
        pass

    def record(self) -> dict:
        return {
            "cell": self.cell,
            "job_id": self.job_id,
            "log": str(self.log),
            "result_pickle": str(self.result_pickle) if self.result_pickle else None,
            "job_log": str(self.job_log) if self.job_log else None,
            "gpu": self.gpu,
        }


class Backend:
    """Submits cells' jobs; ``limit`` is how many run at once (None: the scheduler decides)."""

    name = "?"
    limit: int | None = None
    batch = False  # submit everything at once (a job array) rather than as slots free up
    detached = False  # jobs outlive this process (a rerun reattaches instead of resubmitting)

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def submit(self, specs: list[dict]) -> list[Handle]:
        raise NotImplementedError

    def poll(self, handles: list[Handle]) -> dict[str, tuple[str, str]]:
        return {h.cell: h.poll() for h in handles}

    def reattach(self, record: dict) -> Handle | None:
        return None

    def describe(self) -> str:
        return self.name


# -- debug: in this process, one after the other -------------------------------------------------
class DebugHandle(Handle):
    def __init__(self, cell, job, log):
        super().__init__(cell, job.job_id, log, job_log=job.paths.stdout)
        self.job = job
        self.outcome: tuple[str, str] | None = None

    def poll(self):
        if self.outcome is None:
            # exception() runs the job here, without submitit's post-mortem debugger on failure.
            err = self.job.exception()
            if err is None:
                res = self.job._submission._result  # noqa: SLF001 - the value exception() computed
                self.outcome = (SUCCEEDED, f"{res['seconds']:.0f} s in-process")
            else:
                self.outcome = (FAILED, str(err).split(";", 1)[0] + f"; log {self.log}")
        return self.outcome


class DebugBackend(Backend):
    name = "debug"
    limit = 1

    def __init__(self, folder):
        super().__init__(folder)
        import submitit

        self.executor = submitit.DebugExecutor(folder=str(self.folder / "%j"))

    def submit(self, specs):
        return [
            DebugHandle(s["cell"], self.executor.submit(run_cell_job, s["workspace"], s["target"], s["log"]), s["log"])
            for s in specs
        ]

    def describe(self):
        return "debug (in this process, one cell at a time)"


# -- local: parallel processes on this machine ---------------------------------------------------
class LocalHandle(Handle):
    def __init__(self, cell, job_id, log, result_pickle, job_log, *, process=None, create_time=None):
        super().__init__(cell, job_id, log, result_pickle, job_log)
        self.process, self.create_time = process, create_time

    def _alive(self) -> bool:
        if self.process is not None:
            return self.process.poll() is None
        import psutil

        try:
            p = psutil.Process(int(self.job_id))
            return (
                p.is_running()
                and p.status() != psutil.STATUS_ZOMBIE
                and (self.create_time is None or abs(p.create_time() - self.create_time) < 1)
            )
        except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
            return False

    def poll(self):
        if self._alive():
            return "running", ""
        outcome = _read_result(self.result_pickle)
        if outcome is None:
            rc = self.process.returncode if self.process is not None else None
            return FAILED, f"process {self.job_id} ended without a result (exit {rc}: killed?); log {self.log}"
        return outcome

    def cancel(self):
        if self.process is not None and self.process.poll() is None:
            import signal

            self.process.send_signal(signal.SIGINT)

    def record(self):
        return {**super().record(), "create_time": self.create_time}


class LocalBackend(Backend):
    name = "local"
    detached = True

    def __init__(self, folder, *, jobs: int | None = None, threads: int | None = None):
        super().__init__(folder)
        import submitit

        self.slots = GpuSlots(visible_gpus())
        gpus = len(self.slots.gpus)
        # With GPUs, --jobs is per GPU (small cells share one); without, it is the number of processes.
        self.limit = max(1, (jobs or 1) * gpus if gpus else jobs or os.cpu_count() or 1)
        cpus = os.cpu_count() or 1
        self.threads = threads or max(1, cpus // self.limit)
        self._alive: dict[str, LocalHandle] = {}
        self.executor = submitit.LocalExecutor(folder=str(self.folder / "%j"))
        # submitit's local default would kill a job after 2 minutes.
        self.executor.update_parameters(timeout_min=60 * 24 * 365)

    def submit(self, specs):
        import psutil

        out = []
        for s in specs:
            self._alive = {k: h for k, h in self._alive.items() if h._alive()}
            gpu = self.slots.take(s["cell"], set(self._alive))
            job = self.executor.submit(run_cell_job, s["workspace"], s["target"], s["log"], self.threads, gpu)
            try:
                created = psutil.Process(job._process.pid).create_time()  # noqa: SLF001
            except psutil.NoSuchProcess:
                created = None
            handle = LocalHandle(
                s["cell"],
                job.job_id,
                s["log"],
                job.paths.result_pickle,
                job.paths.stderr,
                process=job._process,
                create_time=created,
            )  # noqa: SLF001
            handle.gpu = gpu
            self._alive[s["cell"]] = handle
            out.append(handle)
        return out

    def reattach(self, record):
        if record.get("executor") != self.name:
            return None
        h = LocalHandle(
            record["cell"],
            record["job_id"],
            Path(record["log"]),
            Path(record["result_pickle"]),
            Path(record["job_log"]) if record.get("job_log") else None,
            create_time=record.get("create_time"),
        )
        return h if h._alive() else None

    def describe(self):
        gpus = f" on GPU(s) {','.join(self.slots.gpus)}" if self.slots.gpus else ""
        return f"local ({self.limit} at a time{gpus}, {self.threads} thread(s) each)"


# -- slurm: a job array through submitit ----------------------------------------------------------
def parse_time_minutes(value: str | int | None) -> int | None:
    """SLURM time limits ("90", "04:00:00", "1-12:00", "30:00") in whole minutes."""
    if value is None or value == "":
        return None
    if isinstance(value, int):
        return value
    text = str(value).strip()
    days = 0
    if "-" in text:
        d, text = text.split("-", 1)
        days = int(d)
    parts = [int(p) for p in text.split(":")] if text else [0]
    if len(parts) == 1:
        h, m, s = (0, parts[0], 0) if days == 0 else (parts[0], 0, 0)
    elif len(parts) == 2:
        h, m, s = (0, parts[0], parts[1]) if days == 0 else (parts[0], parts[1], 0)
    elif len(parts) == 3:
        h, m, s = parts
    else:
        raise ReproduceError(f"cannot read the time limit {value!r} (use e.g. 04:00:00 or 1-12:00:00)")
    return max(1, days * 24 * 60 + h * 60 + m + (1 if s else 0))


class SlurmHandle(Handle):
    def __init__(self, *args, backend: SlurmBackend, **kw):
        super().__init__(*args, **kw)
        self.backend = backend

    def cancel(self):
        subprocess.run(["scancel", self.job_id], capture_output=True)


class SlurmBackend(Backend):
    name = "slurm"
    batch = True
    detached = True
    GRACE_S = 30  # a job squeue does not list yet (just submitted) counts as pending this long

    def __init__(self, folder, *, jobs: int | None = None, settings: dict | None = None, study: str = "study"):
        super().__init__(folder)
        if not shutil.which("sbatch"):
            raise ReproduceError("--executor slurm needs SLURM's sbatch/squeue on PATH (run on a submit host)")
        import submitit

        s = {k: v for k, v in (settings or {}).items() if v not in (None, "", [], {})}
        self.settings = s
        self.limit = jobs
        self.executor = submitit.SlurmExecutor(folder=str(self.folder / "%j"))
        params = {
            "job_name": f"reproduce-{study}",
            "nodes": 1,
            "ntasks_per_node": 1,
            "cpus_per_task": int(s.get("cpus_per_task", 1)),
            "stderr_to_stdout": True,
        }
        if "time" in s:
            params["time"] = parse_time_minutes(s["time"])
        else:
            params["time"] = 60 * 24  # submitit's default (5 min) would kill most cells
        for key in ("partition", "mem", "gpus_per_task", "account", "qos", "constraint", "exclude"):
            if key in s:
                params[key] = s[key]
        if "setup" in s:
            params["setup"] = list(s["setup"])
        if "additional_parameters" in s:
            params["additional_parameters"] = dict(s["additional_parameters"])
        if jobs:
            params["array_parallelism"] = int(jobs)
        self.executor.update_parameters(**params)
        self._warned = False

    def _paths(self, job_id: str):
        from submitit.core.utils import JobPaths

        return JobPaths(self.folder / "%j", job_id=job_id, task_id=0)

    def submit(self, specs):
        with self.executor.batch():
            jobs = [self.executor.submit(run_cell_job, s["workspace"], s["target"], s["log"]) for s in specs]
        return [
            SlurmHandle(s["cell"], j.job_id, s["log"], j.paths.result_pickle, j.paths.stdout, backend=self)
            for s, j in zip(specs, jobs)
        ]

    def queue(self, job_ids: list[str]) -> dict[str, str] | None:
        """``{job_id: SLURM state}`` for those squeue still lists; None if squeue failed."""
        if not job_ids:
            return {}
        bases = sorted({j.split("_")[0] for j in job_ids})
        proc = subprocess.run(
            ["squeue", "--noheader", "--array", "--states=all", f"--jobs={','.join(bases)}", "--format=%i|%T"],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            if "Invalid job id" in proc.stderr:  # every job already purged from the controller
                return {}
            if not self._warned:
                print(f"warning: squeue failed ({proc.stderr.strip()}); retrying", file=sys.stderr)
                self._warned = True
            return None
        out = {}
        for line in proc.stdout.splitlines():
            if "|" in line:
                jid, state = line.strip().split("|", 1)
                out[jid] = state.split()[0]
        return out

    def poll(self, handles):
        queue = self.queue([h.job_id for h in handles])
        out = {}
        for h in handles:
            if queue is None:
                out[h.cell] = ("running", "")  # unknown this round; ask again next time
                continue
            state = queue.get(h.job_id)
            if state in SLURM_PENDING:
                out[h.cell] = ("pending", "" if state == "PENDING" else f"job {h.job_id} {state.lower()}")
            elif state in SLURM_RUNNING:
                out[h.cell] = ("running", "")
            elif state is None and time.monotonic() - h.submitted < self.GRACE_S:
                out[h.cell] = ("pending", "")
            else:
                outcome = _read_result(h.result_pickle)
                if outcome is None and state == "COMPLETED":
                    outcome = (FAILED, f"job {h.job_id} completed without a result; see {h.job_log}")
                if outcome is None:
                    how = state.lower() if state else "gone from the queue"
                    outcome = (FAILED, f"job {h.job_id} {how} before finishing; log {h.log}")
                elif outcome[0] == FAILED and state and state != "COMPLETED":
                    outcome = (FAILED, f"job {h.job_id} {state.lower()}: {outcome[1]}")
                out[h.cell] = outcome
        return out

    def reattach(self, record):
        if record.get("executor") != self.name:
            return None
        queue = self.queue([record["job_id"]])
        if not queue or queue.get(record["job_id"]) not in SLURM_PENDING | SLURM_RUNNING:
            return None
        return SlurmHandle(
            record["cell"],
            record["job_id"],
            Path(record["log"]),
            Path(record["result_pickle"]),
            Path(record["job_log"]) if record.get("job_log") else None,
            backend=self,
        )

    def describe(self):
        extra = ", ".join(f"{k}={v}" for k, v in self.settings.items() if k not in ("setup", "additional_parameters"))
        at_once = f"{self.limit} at a time" if self.limit else "as many at a time as SLURM allows"
        return f"slurm (job array, {at_once}{', ' + extra if extra else ''})"


def make_backend(executor: str, folder: Path, *, jobs: int | None, slurm: dict | None, study: str) -> Backend:
    if jobs is not None and jobs < 1:
        raise ReproduceError(f"--jobs must be at least 1, got {jobs}")
    if executor == "debug":
        return DebugBackend(folder)
    if executor == "local":
        return LocalBackend(folder, jobs=jobs)
    if executor == "slurm":
        return SlurmBackend(folder, jobs=jobs, settings=slurm, study=study)
    raise ReproduceError(f"unknown executor {executor!r} (debug, local, slurm)")
