"""A one-node SLURM cluster on localhost for tests: Debian's munge + slurmctld + slurmd, no systemd.

Everything lives under one temporary directory (config, munge key and socket, state, spool, logs,
pid files); the daemons listen on free loopback ports and run in the foreground as children of the
test process, so stopping them is killing the pids this module started. Clients find the cluster
through ``SLURM_CONF`` (``cluster.env``). Usable by hand too::

    python tests/pipeline/slurm_cluster.py /tmp/cluster     # starts it, prints the env, Ctrl-C stops it
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge"]
DAEMONS = ["munged", "slurmctld", "slurmd"]


class ClusterUnavailable(RuntimeError):
    """SLURM cannot be installed or started here (the test skips with this reason)."""


def _which(name: str) -> str | None:
    return shutil.which(name) or next(
        (str(p) for d in ("/usr/sbin", "/sbin", "/usr/bin") if (p := Path(d) / name).exists()), None
    )


def ensure_installed(timeout: float = 600) -> None:
    """apt-get install the daemons when missing (needs root and apt-get; CI has both)."""
    if all(_which(d) for d in DAEMONS + ["sbatch"]):
        return
    if not shutil.which("apt-get"):
        raise ClusterUnavailable("slurm/munge are not installed and apt-get is not available to install them")
    sudo = [] if os.geteuid() == 0 else (["sudo", "-n"] if shutil.which("sudo") else None)
    if sudo is None:
        raise ClusterUnavailable("slurm/munge are not installed and this user cannot run apt-get (not root, no sudo)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES],
    ):
        proc = subprocess.run(sudo + cmd, env=env, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(
                f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
            )
    missing = [d for d in DAEMONS + ["sbatch"] if not _which(d)]
    if missing:
        raise RuntimeError(f"installed {PACKAGES} but {missing} are still missing")


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class SlurmCluster:
    """``with SlurmCluster(tmpdir) as c:`` runs sbatch/squeue/scancel against ``c.env``."""

    def __init__(self, root: Path, *, cpus: int | None = None, partition: str = "debug"):
        self.root = Path(root)
        self.cpus = cpus or os.cpu_count() or 1
        self.partition = partition
        self.host = socket.gethostname()
        self.procs: dict[str, subprocess.Popen] = {}
        self.conf = self.root / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}

    # -- setup ----------------------------------------------------------------------------------
    def _write_files(self) -> None:
        r = self.root
        for d in ("state", "spool", "log", "run", "munge"):
            (r / d).mkdir(parents=True, exist_ok=True)
        key = r / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        (r / "munge").chmod(0o700)
        self.munge_socket = r / "munge" / "munge.socket"
        ctld_port, d_port = _free_ports(2)
        mem_mb = max(1024, (os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")) // 2**20 - 1024)
        self.conf.write_text(f"""\
ClusterName=reproduce-test
SlurmctldHost={self.host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket}
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool/%n
SlurmctldPidFile={r}/run/slurmctld.pid
SlurmdPidFile={r}/run/slurmd.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/pgid
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
KillWait=5
MinJobAge=600
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=30
MessageTimeout=20
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
PlugStackConfig={r}/plugstack.conf
NodeName={self.host} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={mem_mb} State=UNKNOWN
PartitionName={self.partition} Nodes={self.host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
""")
        (r / "plugstack.conf").write_text("")

    def _spawn(self, name: str, cmd: list[str]) -> None:
        log = open(self.root / "log" / f"{name}.console", "wb")
        self.procs[name] = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env, start_new_session=True
        )
        log.close()

    def _wait(self, what: str, check, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, p in self.procs.items():
                if p.poll() is not None:
                    raise RuntimeError(f"{name} exited ({p.returncode}) while waiting for {what}:\n{self.logs()}")
            if check():
                return
            time.sleep(0.3)
        raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}:\n{self.logs()}")

    def start(self, timeout: float = 60) -> SlurmCluster:
        ensure_installed()
        self._write_files()
        r = self.root
        self._spawn(
            "munged",
            [
                _which("munged"),
                "--foreground",
                "--force",
                f"--socket={self.munge_socket}",
                f"--key-file={r}/munge/munge.key",
                f"--pid-file={r}/munge/munged.pid",
                f"--log-file={r}/log/munged.log",
                f"--seed-file={r}/munge/munged.seed",
            ],
        )
        self._wait("munged", self.munge_socket.exists, timeout)
        self._spawn("slurmctld", [_which("slurmctld"), "-D", "-i", "-f", str(self.conf)])
        self._wait(
            "slurmctld",
            lambda: self._run(["scontrol", "ping"]).returncode == 0 and "UP" in self._run(["scontrol", "ping"]).stdout,
            timeout,
        )
        self._spawn("slurmd", [_which("slurmd"), "-D", "-f", str(self.conf), "-N", self.host])
        self._wait(
            "the node to be idle",
            lambda: self._run(["sinfo", "-h", "-N", "-o", "%T"]).stdout.strip() in ("idle", "mixed", "allocated"),
            timeout,
        )
        return self

    def _run(self, cmd: list[str], timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=timeout)

    def run(self, *cmd: str) -> str:
        proc = self._run(list(cmd))
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stdout}{proc.stderr}")
        return proc.stdout

    # -- teardown -------------------------------------------------------------------------------
    def stop(self) -> None:
        """Cancel leftover jobs, then SIGTERM (SIGKILL after 10 s) the daemons this object started."""
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            try:
                self._run(["scancel", "--full", "--user", str(os.getuid())], timeout=10)
            except Exception:  # noqa: BLE001 - stopping anyway
                pass
        for name in reversed(DAEMONS):
            p = self.procs.get(name)
            if p is None or p.poll() is not None:
                continue
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        self.procs.clear()

    def logs(self, tail: int = 3000) -> str:
        out = []
        for f in sorted((self.root / "log").glob("*")):
            out.append(f"--- {f.name}\n{f.read_text(errors='replace')[-tail:]}")
        return "\n".join(out)

    def __enter__(self) -> SlurmCluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()


if __name__ == "__main__":
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/reproduce-slurm")
    root.mkdir(parents=True, exist_ok=True)
    with SlurmCluster(root) as cluster:
        print(f"export SLURM_CONF={cluster.conf}")
        print(cluster.run("sinfo"))
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass
