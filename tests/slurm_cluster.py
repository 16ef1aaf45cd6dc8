"""A real single-node SLURM cluster for tests: munged, slurmctld and slurmd on this machine.

`single_node_cluster()` writes a slurm.conf into a fresh temp dir, starts the three daemons as
child processes, waits (bounded) until the node is idle, yields a `SlurmCluster`, and on exit
cancels the cluster's jobs and stops exactly the processes it started, by PID.

Two details that are not obvious:
- munged must run as the `munge` user (as root it refuses: "PRNG seed dir is insecure") and on
  its default socket /run/munge/munge.socket.2, because slurmd needs munge before it has read
  any config (next point). A munged that already answers on that socket is reused, not stopped.
- slurmd runs "configless" (`--conf-server`): it fetches slurm.conf from slurmctld and links
  /run/slurm/conf to its cache. Clients outside jobs use SLURM_CONF; but inside a job the
  Snakemake jobstep plugin removes every SLURM_* variable, SLURM_CONF included, before its
  nested `srun`, which then finds the config only at /run/slurm/conf/slurm.conf (how configless
  clusters work in production too). A cluster with /etc/slurm/slurm.conf needs neither.

Needs root and Debian's `slurmctld slurmd slurm-client munge` packages.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

BINARIES = (
    "munged",
    "munge",
    "unmunge",
    "slurmctld",
    "slurmd",
    "sbatch",
    "squeue",
    "sinfo",
    "scontrol",
    "scancel",
)
APT_HINT = "apt-get install -y slurmctld slurmd slurm-client munge"
MUNGE_SOCKET = Path("/run/munge/munge.socket.2")
MUNGE_KEY = Path("/etc/munge/munge.key")
CONFIGLESS_LINK = Path("/run/slurm/conf")
PARTITION = "debug"
NODE = "localhost"  # slurmd -N localhost: the machine's own hostname is not in slurm.conf

START_TIMEOUT_S = 60.0  # munged + slurmctld + slurmd up and the node idle
STOP_TIMEOUT_S = 20.0  # per daemon, after SIGTERM, before SIGKILL
COMMAND_TIMEOUT_S = 30.0  # any single client command (sinfo, sbatch, scontrol ...)


def missing_requirements() -> str | None:
    """Why this machine cannot start a cluster (None when it can)."""
    missing = [name for name in BINARIES if shutil.which(name) is None]
    if missing:
        return f"SLURM/munge binaries not found: {', '.join(missing)} (install: {APT_HINT})"
    if os.geteuid() != 0:
        return "starting munged/slurmctld/slurmd needs root"
    try:
        pwd.getpwnam("munge")
    except KeyError:
        return f"no 'munge' user (it comes with the munge package: {APT_HINT})"
    return None


class ClusterError(RuntimeError):
    """A daemon did not start, or the cluster did not become usable in time."""


@dataclass
class Daemon:
    """One background process this module started; `out` holds its stdout and stderr."""

    name: str
    process: subprocess.Popen
    out: TextIO
    logs: list[Path]

    @classmethod
    def start(
        cls,
        name: str,
        argv: list[str],
        env: dict[str, str],
        out_path: Path,
        log_path: Path | None = None,
        user: int | None = None,
        group: int | None = None,
    ) -> Daemon:
        out = out_path.open("w")
        process = subprocess.Popen(
            argv,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            user=user,
            group=group,
            extra_groups=[] if group is not None else None,
        )
        return cls(name, process, out, [out_path] + ([log_path] if log_path else []))

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        """SIGTERM, wait, then SIGKILL: only this PID, never by name."""
        if self.alive():
            self.process.terminate()
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=STOP_TIMEOUT_S)
        self.out.close()

    def log_tail(self, lines: int = 20) -> str:
        parts = []
        for log in self.logs:
            text = log.read_text(errors="replace") if log.exists() else "(no log file)"
            tail = "\n".join(text.splitlines()[-lines:])
            parts.append(f"--- {self.name}: {log} (last {lines} lines)\n{tail}")
        return "\n".join(parts)


@dataclass
class SlurmCluster:
    """A running single-node cluster. `env` is os.environ plus SLURM_CONF for client commands."""

    root: Path
    conf: Path
    env: dict[str, str]
    daemons: list[Daemon] = field(default_factory=list)
    partition: str = PARTITION
    cpus: int = 2
    real_memory_mb: int = 0

    def run(self, *args: str, timeout: float = COMMAND_TIMEOUT_S) -> subprocess.CompletedProcess:
        """Run a SLURM client command against this cluster; raise with its output on failure."""
        result = subprocess.run(
            args, env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )
        if result.returncode != 0:
            raise ClusterError(
                f"{' '.join(args)} exited {result.returncode}:\n{result.stdout}{result.stderr}"
            )
        return result

    def job_fields(self, job_id: str) -> dict[str, str]:
        """`scontrol show job` as a dict (JobState, ExitCode, WorkDir, NumCPUs, ...)."""
        out = self.run("scontrol", "show", "job", "--oneliner", job_id).stdout
        return dict(item.split("=", 1) for item in out.split() if "=" in item)

    def wait_for_job(self, job_id: str, timeout: float = 60.0) -> dict[str, str]:
        """Poll until the job leaves PENDING/RUNNING; return its final scontrol fields."""
        deadline = time.monotonic() + timeout
        while True:
            fields = self.job_fields(job_id)
            if fields.get("JobState") not in ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING"):
                return fields
            if time.monotonic() > deadline:
                raise ClusterError(f"job {job_id} still {fields.get('JobState')} after {timeout}s")
            time.sleep(0.5)

    def diagnostics(self) -> str:
        return "\n".join(daemon.log_tail() for daemon in self.daemons)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _node_memory_mb() -> int:
    """RealMemory as `slurmd -C` reports it; slurmd drains a node configured above that."""
    out = subprocess.run(
        ["slurmd", "-C"], capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=True
    ).stdout
    fields = dict(item.split("=", 1) for item in out.split() if "=" in item)
    return int(fields["RealMemory"])


def _munge_works(env: dict[str, str]) -> bool:
    """True when a munged answers on the default socket (encode, then decode, a credential)."""
    try:
        cred = subprocess.run(
            ["munge", "-n"], env=env, capture_output=True, timeout=5, check=True
        ).stdout
        subprocess.run(["unmunge"], input=cred, env=env, capture_output=True, timeout=5, check=True)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
        return False
    return True


def _start_munged(root: Path, env: dict[str, str]) -> Daemon | None:
    """Start munged as the munge user on the default socket; None when one already runs."""
    if _munge_works(env):
        return None
    munge = pwd.getpwnam("munge")
    # munged checks the ownership and permissions of its runtime dir and key.
    MUNGE_SOCKET.parent.mkdir(parents=True, exist_ok=True)
    os.chown(MUNGE_SOCKET.parent, munge.pw_uid, munge.pw_gid)
    MUNGE_SOCKET.parent.chmod(0o755)
    if not MUNGE_KEY.exists():  # the Debian package creates one; make it if someone removed it
        subprocess.run(["mungekey", "--create", f"--keyfile={MUNGE_KEY}"], check=True, timeout=30)
        os.chown(MUNGE_KEY, munge.pw_uid, munge.pw_gid)
        MUNGE_KEY.chmod(0o400)
    # In the foreground munged logs to stderr, which Daemon.start collects.
    daemon = Daemon.start(
        "munged",
        ["munged", "--foreground"],
        env,
        root / "log" / "munged.out",
        user=munge.pw_uid,
        group=munge.pw_gid,
    )
    deadline = time.monotonic() + 10
    while not _munge_works(env):
        if not daemon.alive() or time.monotonic() > deadline:
            daemon.stop()
            raise ClusterError(f"munged did not start\n{daemon.log_tail()}")
        time.sleep(0.2)
    return daemon


def write_slurm_conf(
    root: Path, ctld_port: int, slurmd_port: int, cpus: int, memory_mb: int
) -> Path:
    """A single-node slurm.conf: no accounting, no cgroups, every path inside `root`."""
    conf = root / "slurm.conf"
    conf.write_text(
        f"""\
# Single-node test cluster written by tests/slurm_cluster.py
ClusterName=cnnpartest
SlurmctldHost=localhost
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# slurmd fetches this file from slurmctld (configless); see the module docstring
SlurmctldParameters=enable_configless
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/run/slurmctld.pid
SlurmdPidFile={root}/run/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
# Finished jobs stay visible to squeue/scontrol for an hour: without accounting, squeue is
# how the Snakemake plugin learns a job's final state (it must exceed 3x its poll interval).
MinJobAge=3600
ReturnToService=2
SlurmdTimeout=60
NodeName={NODE} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN
PartitionName={PARTITION} Nodes={NODE} Default=YES MaxTime=INFINITE State=UP
"""
    )
    return conf


def _node_state(env: dict[str, str]) -> str:
    try:
        result = subprocess.run(
            ["sinfo", "--noheader", "--Node", f"--nodes={NODE}", "--format=%T"],
            env=env,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return "sinfo timed out"
    return result.stdout.strip() if result.returncode == 0 else result.stderr.strip()


def _wait_until_idle(cluster: SlurmCluster) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    state = ""
    while state != "idle":
        dead = [daemon.name for daemon in cluster.daemons if not daemon.alive()]
        if dead:
            raise ClusterError(f"{', '.join(dead)} exited during start-up\n{cluster.diagnostics()}")
        if time.monotonic() > deadline:
            raise ClusterError(
                f"node {NODE} not idle after {START_TIMEOUT_S:.0f}s (sinfo: {state!r})\n"
                f"{cluster.diagnostics()}"
            )
        time.sleep(0.5)
        state = _node_state(cluster.env)


def _cancel_jobs(cluster: SlurmCluster) -> None:
    """Cancel whatever the tests left queued or running, so no slurmstepd outlives slurmd."""
    with contextlib.suppress(subprocess.SubprocessError, OSError):
        subprocess.run(
            ["scancel", f"--partition={cluster.partition}"],
            env=cluster.env,
            capture_output=True,
            timeout=COMMAND_TIMEOUT_S,
            check=False,
        )
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while time.monotonic() < deadline:
            active = subprocess.run(
                ["squeue", "--noheader", "--states=PENDING,RUNNING,COMPLETING", "--format=%i"],
                env=cluster.env,
                capture_output=True,
                text=True,
                timeout=COMMAND_TIMEOUT_S,
                check=False,
            ).stdout.split()
            if not active:
                return
            time.sleep(0.5)


@contextlib.contextmanager
def single_node_cluster(cpus: int = 2, keep_dir: bool = False) -> Iterator[SlurmCluster]:
    """Start munged, slurmctld and slurmd; yield the cluster; always stop what was started."""
    reason = missing_requirements()
    if reason is not None:
        raise ClusterError(reason)
    root = Path(tempfile.mkdtemp(prefix="cnnpar-slurm-"))
    for sub in ("state", "spool", "log", "run"):
        (root / sub).mkdir()
    node_memory_mb = _node_memory_mb()
    memory_mb = node_memory_mb - max(1024, node_memory_mb // 10)  # headroom for OS and tests
    ctld_port = _free_port()
    conf = write_slurm_conf(root, ctld_port, _free_port(), cpus, memory_mb)
    env = {**os.environ, "SLURM_CONF": str(conf)}
    # slurmd gets no SLURM_CONF: it takes the config from slurmctld (configless, see above).
    slurmd_env = {key: value for key, value in env.items() if key != "SLURM_CONF"}
    logs = root / "log"
    cluster = SlurmCluster(root, conf, env, cpus=cpus, real_memory_mb=memory_mb)
    try:
        munged = _start_munged(root, env)
        if munged is not None:
            cluster.daemons.append(munged)
        cluster.daemons.append(
            Daemon.start(
                "slurmctld",
                ["slurmctld", "-D", "-i"],
                env,
                logs / "slurmctld.out",
                logs / "slurmctld.log",
            )
        )
        cluster.daemons.append(
            Daemon.start(
                "slurmd",
                ["slurmd", "-D", "-N", NODE, "--conf-server", f"localhost:{ctld_port}"],
                slurmd_env,
                logs / "slurmd.out",
                logs / "slurmd.log",
            )
        )
        _wait_until_idle(cluster)
        yield cluster
    finally:
        if any(daemon.name == "slurmctld" and daemon.alive() for daemon in cluster.daemons):
            _cancel_jobs(cluster)
        for daemon in reversed(cluster.daemons):  # slurmd, slurmctld, then munged
            daemon.stop()
        # slurmd's configless link points into `root`; drop it once `root` goes away.
        if CONFIGLESS_LINK.is_symlink() and Path(os.readlink(CONFIGLESS_LINK)).is_relative_to(root):
            CONFIGLESS_LINK.unlink()
        if not keep_dir:
            shutil.rmtree(root, ignore_errors=True)
