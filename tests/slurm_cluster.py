"""A real SLURM cluster of two nodes on this machine, for tests: munged, slurmctld and two slurmd daemons.

Debian's slurm-wlm is installed by ``scripts/install_slurm.sh`` (root). Everything else lives in a temporary
directory: slurm.conf, the controller's state, each node's spool, logs and a private munge socket, so the
cluster neither needs nor touches a system-wide SLURM configuration. Both nodes run on this host on their
own ports (``slurmd -N nodeX``); their names resolve to 127.0.0.1 through /etc/hosts so that a job can use
``scontrol show hostnames`` for MASTER_ADDR exactly as it would on a real cluster.

Use it as a context manager::

    with SlurmCluster(tmp_path / "slurm") as cluster:
        job = cluster.sbatch(["--nodes=2", "launch/slurm.sh"], env=...)
        info = cluster.wait(job, {"COMPLETED"}, timeout=120)

Interactive check (starts a cluster, runs a trivial two-node job, prints its output, stops)::

    sudo python tests/slurm_cluster.py
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run directly: sudo python tests/slurm_cluster.py
from launch.processes import free_port  # noqa: E402

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "sinfo", "squeue", "scancel", "srun")
HOSTS_FILE = "/etc/hosts"
HOSTS_MARK = "# SLURM test cluster nodes (tests/slurm_cluster.py)"
FINISHED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE",
            "PREEMPTED"}


def unavailable_reason() -> str | None:
    """Why a cluster cannot start here (to skip a test with), or None when it can."""
    missing = [name for name in DAEMONS if shutil.which(name) is None]
    if missing:
        return f"SLURM/munge not installed (missing {', '.join(missing)}): run `sudo bash scripts/install_slurm.sh`"
    if os.geteuid() != 0:
        return "the SLURM test cluster runs slurmd as root (it starts job steps as any user): run the tests as root"
    if not os.path.isfile("/etc/munge/munge.key"):
        return "no /etc/munge/munge.key: run `sudo bash scripts/install_slurm.sh`"
    return None


def ensure_resolvable(names: list[str]) -> None:
    """Map node names to 127.0.0.1 in /etc/hosts when they do not resolve (idempotent, needs root)."""
    missing = []
    for name in names:
        try:
            socket.gethostbyname(name)
        except OSError:
            missing.append(name)
    if missing:
        with open(HOSTS_FILE, "a") as f:
            f.write(f"\n127.0.0.1 {' '.join(missing)}  {HOSTS_MARK}\n")


class SlurmCluster:
    """Two (or more) SLURM nodes with ``cpus`` CPUs each, on this host, in directory ``root``."""

    def __init__(self, root: str | os.PathLike, nodes: int = 2, cpus: int = 1, partition: str = "debug"):
        self.root = Path(root)
        self.node_names = [f"node{i + 1}" for i in range(nodes)]
        self.cpus = cpus
        self.partition = partition
        self.conf = self.root / "slurm.conf"
        self.munge_socket = self.root / "munge" / "munge.socket"
        self.logs = self.root / "log"
        self._procs: list[subprocess.Popen] = []
        # Every SLURM command and daemon started for this cluster finds it through SLURM_CONF.
        self.env = dict(os.environ, SLURM_CONF=str(self.conf))

    # -- set-up -------------------------------------------------------------------------------------------
    def _write_conf(self) -> None:
        host = socket.gethostname().split(".")[0]
        ctld_port = free_port()
        node_lines = "\n".join(
            f"NodeName={name} NodeHostname={host} NodeAddr=127.0.0.1 Port={free_port()} CPUs={self.cpus} State=UNKNOWN"
            for name in self.node_names)
        r = self.root
        self.conf.write_text(f"""\
# Written by tests/slurm_cluster.py: a throwaway cluster on one host.
ClusterName=testcluster
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# Private munge socket; cred_expire also sets how long a requeued job waits before it may start (default 120 s).
AuthInfo=socket={self.munge_socket},cred_expire=10
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool/%n
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd-%n.pid
SlurmctldLogFile={self.logs}/slurmctld.log
SlurmdLogFile={self.logs}/slurmd-%n.log
# No cgroups in containers: track processes by parent pid, no task binding, no accounting daemon.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
ReturnToService=2
JobRequeue=1
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=30
MinJobAge=600
{node_lines}
PartitionName={self.partition} Nodes={",".join(self.node_names)} Default=YES MaxTime=INFINITE State=UP
""")

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen:
        out = open(self.logs / f"{name}.out", "wb")
        proc = subprocess.Popen(argv, env=self.env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        out.close()
        self._procs.append(proc)
        return proc

    def start(self, timeout: float = 60.0) -> "SlurmCluster":
        reason = unavailable_reason()
        if reason:
            raise RuntimeError(reason)
        for sub in ["state", "log", "munge", *(f"spool/{n}" for n in self.node_names)]:
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self.root / "munge", 0o700)
        ensure_resolvable(self.node_names)
        self._write_conf()
        self._spawn("munged", ["munged", "--foreground", "--force", f"--socket={self.munge_socket}",
                               f"--pid-file={self.root}/munge/munged.pid", f"--log-file={self.logs}/munged.log",
                               f"--seed-file={self.root}/munge/munged.seed"])
        self._wait_for(lambda: self.munge_socket.exists(), timeout, "munged to create its socket")
        self._spawn("slurmctld", ["slurmctld", "-D", "-i", "-f", str(self.conf)])
        self._wait_for(lambda: self._run(["scontrol", "ping"], check=False).returncode == 0, timeout,
                       "slurmctld to answer `scontrol ping`")
        for name in self.node_names:
            self._spawn(f"slurmd-{name}", ["slurmd", "-D", "-N", name, "-f", str(self.conf)])
        self._wait_for(self._all_idle, timeout, f"nodes {self.node_names} to be idle in sinfo")
        return self

    def _wait_for(self, ready, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for proc in self._procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode} while waiting for {what}; "
                                       f"logs:\n{self.log_tail()}")
            if ready():
                return
            time.sleep(0.5)
        raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}; logs:\n{self.log_tail()}")

    def _all_idle(self) -> bool:
        out = self._run(["sinfo", "--noheader", "--Node", "--format=%N %t"], check=False).stdout
        states = dict(line.split() for line in out.splitlines() if line.strip())
        return all(states.get(name) == "idle" for name in self.node_names)

    # -- use ----------------------------------------------------------------------------------------------
    def _run(self, argv: list[str], check: bool = True, env: dict | None = None, cwd=None,
             timeout: float = 30) -> subprocess.CompletedProcess:
        full_env = dict(self.env, **(env or {}), SLURM_CONF=str(self.conf))
        proc = subprocess.run(argv, env=full_env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
        return proc

    def scontrol(self, *args: str, check: bool = True) -> str:
        return self._run(["scontrol", *args], check=check).stdout

    def sbatch(self, args: list[str], env: dict | None = None, cwd=None) -> int:
        """Submit; returns the job id. ``env`` is added to the submitting environment (sbatch exports it)."""
        out = self._run(["sbatch", "--parsable", *args], env=env, cwd=cwd).stdout.strip()
        return int(out.split(";")[0])

    def job(self, job_id: int) -> dict[str, str]:
        """`scontrol show job` as a dict (JobState, Restarts, ExitCode, ...); works without slurmdbd."""
        out = self.scontrol("show", "job", "--oneliner", str(job_id))
        return dict(m.groups() for m in re.finditer(r"(\w+)=(\S*)", out))

    def wait(self, job_id: int, states: set[str], timeout: float, poll: float = 1.0) -> dict[str, str]:
        """Poll until the job reaches one of ``states`` (or any finished state); returns its last record."""
        deadline = time.monotonic() + timeout
        info: dict[str, str] = {}
        while time.monotonic() < deadline:
            info = self.job(job_id)
            if info.get("JobState") in states or info.get("JobState") in FINISHED:
                return info
            time.sleep(poll)
        raise TimeoutError(f"job {job_id} not in {sorted(states)} after {timeout:.0f} s: {info}\n{self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        parts = []
        for path in sorted(self.logs.glob("*")):
            text = path.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"== {path.name}\n" + "\n".join(text))
        return "\n".join(parts)

    # -- tear-down ----------------------------------------------------------------------------------------
    def stop(self) -> None:
        if any(p.poll() is None for p in self._procs):
            # Cancel whatever still runs so slurmd stops its job steps before the daemons go away.
            self._run(["scancel", "--full", f"--partition={self.partition}"], check=False)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                out = self._run(["squeue", "--noheader", "--states=RUNNING,COMPLETING"], check=False)
                if out.returncode != 0 or not out.stdout.strip():
                    break
                time.sleep(0.5)
        # Reverse order: slurmd daemons, slurmctld, munged last (the others authenticate through it).
        for proc in reversed(self._procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)
        self._procs.clear()

    def __enter__(self) -> "SlurmCluster":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()


def _demo() -> int:
    with tempfile.TemporaryDirectory(prefix="slurm-demo-") as tmp, SlurmCluster(tmp) as cluster:
        script = Path(tmp) / "hello.sh"
        script.write_text("#!/bin/bash\nsrun bash -c 'echo rank $SLURM_PROCID of $SLURM_NTASKS on $SLURMD_NODENAME'\n")
        job = cluster.sbatch(["--nodes=2", "--ntasks-per-node=1", f"--output={tmp}/hello.out", str(script)])
        info = cluster.wait(job, {"COMPLETED"}, timeout=60)
        print(cluster.scontrol("show", "hostnames", info["NodeList"]).strip())
        print((Path(tmp) / "hello.out").read_text().strip())
        return 0 if info["JobState"] == "COMPLETED" else 1


if __name__ == "__main__":
    sys.exit(_demo())
