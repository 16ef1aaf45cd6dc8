"""The environment record attached to every run: machine, software versions, commit, allocator."""

from __future__ import annotations

import ctypes
import datetime as dt
import os
import platform
import socket
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any


def allocator() -> str:
    """The allocator in force: what LD_PRELOAD swaps in, else glibc malloc."""
    preload = os.environ.get("LD_PRELOAD", "")
    return f"LD_PRELOAD={preload}" if preload else "glibc"


def tune_malloc() -> str:
    """Keep freed torch buffers in glibc's heap instead of unmapping them after every batch.

    glibc serves big blocks with mmap and returns them on free, so each batch re-faults its
    activation buffers (measured here: sequential B=256 at 6.5k cells/s, 10k with this).
    Returns the allocator label for the records.
    """
    if platform.libc_ver()[0] != "glibc":
        return allocator()
    libc = ctypes.CDLL("libc.so.6")
    m_trim_threshold, m_mmap_threshold = -1, -3
    ok = libc.mallopt(m_mmap_threshold, 1 << 30) == 1 and libc.mallopt(m_trim_threshold, 1 << 30)
    return "glibc-tuned" if ok else allocator()


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_gib() -> float | None:
    try:
        import psutil

        return round(psutil.virtual_memory().total / 2**30, 2)
    except ImportError:  # pragma: no cover
        return None


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def git_revision(cwd: str | os.PathLike[str] | None = None) -> str | None:
    """The checkout's commit (with '-dirty' if modified), or None outside a git repo."""
    cwd = cwd or Path(__file__).resolve().parent
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{rev}-dirty" if dirty else rev


def cuda_device() -> str | None:
    """Name of the first CUDA device torch sees, or None."""
    try:
        import torch

        if torch.cuda.is_available():
            return str(torch.cuda.get_device_name(0))
    except Exception:  # a broken driver must not break metadata collection
        return None
    return None


@dataclass
class Environment:
    """The machine, the software and the limits a run ran under, each read where it applies.

    `cpus_available` is this process's affinity once torch (and numba, if it ran) started, as
    OMP_PROC_BIND can narrow it then; `cpus_at_start` the affinity when cnnpar started (taskset,
    cgroup cpusets, SLURM binding). `cpu_quota` is a cgroup CPU quota in CPUs (None: none).
    `memory_available_gib` is the least memory left under every limit (host, cgroup, SLURM),
    `memory_limits` names each limit below the host's. `numba_settings` is numba's effective
    settings
    (`NumbaSettings`); `tmpdir` where temporary files go.
    """

    cpu_model: str
    logical_cores: int  # the whole machine
    cpus_available: int
    ram_gib: float | None
    os: str
    python: str
    numpy: str | None
    torch: str | None
    numba: str | None
    snakemake: str | None
    cnnpar: str | None
    cuda_device: str | None
    git_revision: str | None
    hostname: str
    utc_time: str
    malloc: str = field(default_factory=allocator)
    cpus_at_start: int | None = None
    cpu_quota: float | None = None
    memory_available_gib: float | None = None
    memory_limits: list[str] = field(default_factory=list)
    numba_settings: dict[str, Any] | None = None
    tmpdir: str | None = None
    # the measured code's version per kind of run (cnnpar.measure.code)
    code_versions: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def environment() -> Environment:
    """The environment record of this process, read now: call it after the run's libraries
    started (its CPUs are read after torch's start) and after the run (numba's settings say
    which threading layer and cache it used)."""
    from cnnpar import limits
    from cnnpar.measure import numba_settings
    from cnnpar.measure.code import code_versions

    memory = limits.memory_limits()
    try:
        numba: dict[str, Any] = numba_settings.settings().as_dict()
    except numba_settings.NumbaSettingError as err:
        numba = {"error": str(err)}
    return Environment(
        cpu_model=_cpu_model(),
        logical_cores=os.cpu_count() or 1,
        cpus_available=limits.cpus_available(),
        cpus_at_start=limits.CPUS_AT_START,
        cpu_quota=limits.cpu_quota(),
        memory_available_gib=round(min(free for free, _ in memory) / 2**30, 2),
        memory_limits=[label for _, label in memory[1:]],
        numba_settings=numba,
        tmpdir=tempfile.gettempdir(),
        code_versions=code_versions(),
        ram_gib=_ram_gib(),
        os=f"{platform.system()} {platform.release()}",
        python=platform.python_version(),
        numpy=_version("numpy"),
        torch=_version("torch"),
        numba=_version("numba"),
        snakemake=_version("snakemake"),
        cnnpar=_version("cnnpar"),
        cuda_device=cuda_device(),
        git_revision=git_revision(),
        hostname=socket.gethostname(),
        utc_time=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    )
