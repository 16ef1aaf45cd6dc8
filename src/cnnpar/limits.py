"""Limits checked before any work: thread and worker counts, memory estimates, oversubscription.

A count far beyond the machine crashes the libraries rather than failing cleanly (torch
segfaults, numba aborts in LLVM, BLAS runs out of memory), and a size whose memory need exceeds
what is free ends in the OOM killer minutes later. Both are refused up front with one line
(exit 2). Running more threads than CPUs is allowed, since it is a legitimate experiment, but
it is announced and recorded, because its timings do not measure scaling.
"""

from __future__ import annotations

import os
import sys

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


def cpus_available() -> int:
    """CPUs this process may run on (its affinity mask: a SLURM job's or taskset's share)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


def available_memory() -> int:
    """Bytes the kernel could give this process without swapping."""
    import psutil

    return int(psutil.virtual_memory().available)


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
        raise LimitError(
            f"{what} needs about {human_bytes(need)} of memory, more than the "
            f"{human_bytes(free)} available; {fix}"
        )


def oversubscription(processes: int, threads_per_process: int) -> dict[str, bool | int]:
    """Whether processes × threads exceed the CPUs available, warning on stderr if so; the
    result goes into the run record's `results`."""
    cpus = cpus_available()
    wanted = processes * threads_per_process
    oversubscribed = wanted > cpus
    if oversubscribed:
        print(
            f"cnnpar: warning: {processes} process(es) x {threads_per_process} thread(s) = "
            f"{wanted} on {cpus} available CPU(s): oversubscribed, so timings do not measure "
            "scaling",
            file=sys.stderr,
        )
    return {"oversubscribed": oversubscribed, "cpus_available": cpus}
