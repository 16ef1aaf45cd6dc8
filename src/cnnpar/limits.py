"""Limits checked before any work: thread and worker counts, memory estimates, oversubscription.

A count far beyond the machine crashes the libraries rather than failing cleanly (torch
segfaults, numba aborts in LLVM, BLAS runs out of memory), and a size whose memory need exceeds
what is free ends in the OOM killer minutes later. Both are refused up front with one line
(exit 2). Running more threads than CPUs is allowed, since it is a legitimate experiment, but
it is announced and recorded, because its timings do not measure scaling.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

from cnnpar.errors import CnnparError

# Beyond 8 threads or processes per CPU no timing in this study means anything, and well before
# 100,000 the libraries crash.
PARALLELISM_PER_CPU = 8


class LimitError(CnnparError):
    """A count or size beyond what this machine can run."""


def max_parallelism() -> int:
    """The most threads or worker processes any command accepts here."""
    return PARALLELISM_PER_CPU * (os.cpu_count() or 1)


def check_parallelism(value: int, option: str) -> None:
    """Refuse a thread or worker count above `max_parallelism`, naming the option."""
    limit = max_parallelism()
    if value > limit:
        raise LimitError(
            f"{option} {value} is more than this machine runs sensibly: at most {limit} "
            f"({PARALLELISM_PER_CPU} x {os.cpu_count() or 1} CPUs); use a smaller {option}"
        )


def _affinity() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


# The affinity when cnnpar was imported (the CLI imports this module first, before torch or
# numba start): what taskset, a cgroup cpuset or SLURM granted the job.
CPUS_AT_START = _affinity()
# Variables with which an OpenMP runtime binds the thread that starts it to one place.
BINDING_ENV_VARS = ("OMP_PROC_BIND", "OMP_PLACES", "GOMP_CPU_AFFINITY", "KMP_AFFINITY")


def cpus_available() -> int:
    """CPUs this process may run on once torch has started (its affinity mask).

    Read after torch starts its OpenMP runtime, because with OMP_PROC_BIND (which many site
    modules export) that runtime binds the process's main thread to one CPU, and every thread
    started afterwards (numba's, a worker's) inherits the narrower mask. numba's OpenMP
    threading layer does the same when it starts; callers that run numba read this after
    starting numba's threads (`measure.threads.set_threads`).
    """
    import torch

    torch.get_num_threads()
    return _affinity()


def narrowed_by() -> str:
    """The setting that likely narrowed this process's CPUs since it started."""
    given = [f"{var}={os.environ[var]}" for var in BINDING_ENV_VARS if var in os.environ]
    if given:
        return (
            f"{' and '.join(given)} bound it; unset {' and '.join(v.split('=')[0] for v in given)}"
        )
    return "a library bound it to fewer CPUs"


def warn_if_narrowed(cpus: int) -> None:
    """Warn on stderr when the process may use fewer CPUs (`cpus`) than when it started."""
    if cpus < CPUS_AT_START:
        print(
            f"cnnpar: warning: this process may run on {cpus} CPU(s) since torch started, "
            f"{CPUS_AT_START} before: {narrowed_by()}",
            file=sys.stderr,
        )


# --- memory: the host's free memory, and what a container or a scheduler grants ---------------

UNLIMITED = 1 << 60  # cgroup v1 reports "no limit" as a number near 2**63


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _cgroup_dirs(
    proc: Path = Path("/proc/self"), controller: str = "memory"
) -> list[tuple[str, Path]]:
    """(version, directory) of this process's cgroup, and each of its ancestors up to the
    mount point, for cgroup v2 and the v1 `controller`."""
    try:
        membership = (proc / "cgroup").read_text().splitlines()
        mounts = (proc / "mountinfo").read_text().splitlines()
    except OSError:
        return []
    paths: dict[str, str] = {}
    for line in membership:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0" and parts[1] == "":
            paths["v2"] = parts[2]
        elif controller in parts[1].split(","):
            paths["v1"] = parts[2]
    found = []
    for line in mounts:
        fields = line.split()
        if " - " not in line or len(fields) < 5:
            continue
        root, mount_point = fields[3], fields[4]
        after = line.split(" - ", 1)[1].split()
        fstype, options = after[0], after[-1] if len(after) > 2 else ""
        if fstype == "cgroup2" and "v2" in paths:
            version, path = "v2", paths["v2"]
        elif fstype == "cgroup" and controller in options.split(",") and "v1" in paths:
            version, path = "v1", paths["v1"]
        else:
            continue
        relative = os.path.relpath(path, root) if path.startswith(root) else path.lstrip("/")
        leaf = Path(mount_point) / relative
        top = Path(mount_point)
        chain = [leaf, *[p for p in leaf.parents if p == top or top in p.parents]]
        found.extend((version, d) for d in chain)
    return found


def memory_limits(proc: Path = Path("/proc/self")) -> list[tuple[int, str]]:
    """(bytes still free under it, what it is) for every memory limit this process runs under:
    the host's available memory, its cgroup's limit (v2 memory.max, v1
    memory.limit_in_bytes, a container's or systemd's) less what the cgroup uses, and the
    memory SLURM granted the job (SLURM_MEM_PER_NODE, or SLURM_MEM_PER_CPU x its CPUs) less
    what this process already holds."""
    import psutil

    found = [(int(psutil.virtual_memory().available), "the host's available memory")]
    for version, directory in _cgroup_dirs(proc):
        names = ("memory.max", "memory.current") if version == "v2" else (
            "memory.limit_in_bytes", "memory.usage_in_bytes")  # fmt: skip
        limit = _read_int(directory / names[0])
        if limit is None or limit >= UNLIMITED:
            continue
        used = _read_int(directory / names[1]) or 0
        found.append(
            (
                max(0, limit - used),
                f"cgroup {version} {directory / names[0]} = {human_bytes(limit)}",
            )
        )
    granted = _slurm_granted()
    if granted is not None:
        limit, label = granted
        used = int(psutil.Process().memory_info().rss)
        found.append((max(0, limit - used), label))
    return found


def _slurm_granted() -> tuple[int, str] | None:
    """Bytes SLURM granted this job, from its environment (values in MB)."""
    per_node = os.environ.get("SLURM_MEM_PER_NODE", "")
    if per_node.isdigit():
        mb = int(per_node)
        return (
            mb * 2**20,
            f"SLURM's grant SLURM_MEM_PER_NODE={per_node} ({human_bytes(mb * 2**20)})",
        )
    per_cpu = os.environ.get("SLURM_MEM_PER_CPU", "")
    if per_cpu.isdigit():
        cpus = next(
            (int(os.environ[v]) for v in ("SLURM_CPUS_PER_TASK", "SLURM_CPUS_ON_NODE")
             if os.environ.get(v, "").isdigit()),
            1,
        )  # fmt: skip
        total = int(per_cpu) * cpus * 2**20
        return total, (
            f"SLURM's grant SLURM_MEM_PER_CPU={per_cpu} x {cpus} CPU(s) ({human_bytes(total)})"
        )
    return None


def cpu_quota(proc: Path = Path("/proc/self")) -> float | None:
    """CPUs' worth of time per second a cgroup quota allows (a container's --cpus, cgroup v2
    cpu.max or v1 cpu.cfs_quota_us), the tightest along the hierarchy; None when unlimited.
    A quota does not shrink the affinity mask, so threads beyond it wait rather than fail."""
    quotas = []
    for version, directory in _cgroup_dirs(proc, "cpu"):
        if version == "v2":
            try:
                quota, period = (directory / "cpu.max").read_text().split()[:2]
            except (OSError, ValueError):
                continue
            if quota.isdigit() and period.isdigit() and int(period) > 0:
                quotas.append(int(quota) / int(period))
        else:
            quota_us = (directory / "cpu.cfs_quota_us").read_text().strip() if (
                directory / "cpu.cfs_quota_us").is_file() else ""  # fmt: skip
            period_us = _read_int(directory / "cpu.cfs_period_us")
            if quota_us.isdigit() and period_us:
                quotas.append(int(quota_us) / period_us)
    return round(min(quotas), 3) if quotas else None


def usable_cpus() -> int:
    """CPUs this process can keep busy: its affinity mask, lowered to a cgroup CPU quota (a
    container's --cpus), which does not shrink the mask."""
    quota = cpu_quota()
    cpus = _affinity()
    return max(1, min(cpus, math.floor(quota))) if quota else cpus


def available_memory() -> int:
    """Bytes this process can still use: the least of the host's available memory and what is
    left under each limit a container or a scheduler set (`memory_limits`)."""
    return min(free for free, _ in memory_limits())


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def check_memory(need: int, what: str, fix: str) -> None:
    """Refuse a run whose memory estimate `need` exceeds the available memory."""
    free = available_memory()
    if need > free:
        limit = next((label for left, label in memory_limits() if left == free), None)
        under = f" under {limit}" if limit and not limit.startswith("the host") else ""
        raise LimitError(
            f"{what} needs about {human_bytes(need)} of memory, more than the "
            f"{human_bytes(free)} available{under}; {fix}"
        )


def oversubscription(processes: int, threads_per_process: int) -> dict[str, bool | int]:
    """Whether processes × threads exceed the CPUs available, warning on stderr if so; the
    result goes into the run record's `results`."""
    cpus = cpus_available()
    warn_if_narrowed(cpus)
    wanted = processes * threads_per_process
    oversubscribed = wanted > cpus
    if oversubscribed:
        print(
            f"cnnpar: warning: {processes} process(es) x {threads_per_process} thread(s) = "
            f"{wanted} on {cpus} available CPU(s): oversubscribed, so timings do not measure "
            "scaling",
            file=sys.stderr,
        )
    return {
        "oversubscribed": oversubscribed,
        "cpus_available": cpus,
        "cpus_at_start": CPUS_AT_START,
    }
