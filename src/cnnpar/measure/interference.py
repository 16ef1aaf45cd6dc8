"""Guarding a timed region: no overlap with other timed runs, and interference measured.

`TimedRegion` wraps the part of a run whose clock readings go into the study:

1. it takes an exclusive lock (flock) shared by every timed cnnpar run on this machine, so two
   studies, an orphaned job or a hand-run command never time at once, and records the wait;
2. it probes the float32 matmul rate at the run's own thread count (or on its GPU) just before
   and just after, which is the run's roofline and a witness of the machine's speed;
3. over the region, it reads the CPU time that *other* processes took on the CPUs this process
   may run on (/proc/stat minus this process tree) and the hypervisor's steal time.

The run is flagged when others took more than `Limits.max_others_share` of its CPUs or the probes
differ by more than `Limits.max_probe_change`. The lock lives in the system temp directory, not in
a results directory: timings on different cluster nodes do not disturb each other, and a shared
filesystem would serialise them for nothing.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_LOCK = Path(tempfile.gettempdir()) / "cnnpar-timing.lock"
PROBE_N = 768  # sgemm side: ~0.9 GFLOP per product, a few tens of ms per probe on one core
PROBE_REPEATS = 5
# Sustained GEMM before each CPU probe: idle vCPUs and a sleeping thread pool read up to 2x slow
# for the first tens of ms, and the probe after the work always follows sustained work.
PROBE_WARMUP_S = 0.25
GPU_PROBE_N = 4096


@dataclass(frozen=True)
class Limits:
    """When a timed region counts as disturbed."""

    max_others_share: float = 0.10  # CPU time of other processes / (wall × CPUs available)
    max_probe_change: float = 0.15  # |after - before| / max(before, after)


@dataclass(frozen=True)
class Interference:
    """What happened on the machine around and during one timed region."""

    seconds: float  # wall time of the monitored region
    cpus: int  # CPUs this process may run on (its affinity)
    others_cpu_share: float | None  # None where /proc/stat is unavailable
    steal_share: float | None
    probe_before_gflops: float | None
    probe_after_gflops: float | None
    probe_change: float | None
    roofline_gflops: float | None  # the higher probe: this run's own upper bound
    roofline_device: str  # "cpu (2 threads)" or the GPU's name
    lock_wait_s: float
    max_others_share: float  # the limits this run was judged by
    max_probe_change: float
    flagged: bool
    reasons: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- the machine-wide lock -------------------------------------------------------------------


@contextlib.contextmanager
def timing_lock(
    path: str | os.PathLike[str] = DEFAULT_LOCK, warn: Callable[[str], None] | None = None
) -> Iterator[float]:
    """Hold an exclusive flock on `path` for the block; yields the seconds spent waiting."""
    path = Path(path)
    warn = warn or _stderr
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except PermissionError:  # another user's lock file: a read-only descriptor locks as well
        fd = os.open(path, os.O_RDONLY)
    try:
        start = time.perf_counter()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            warn(
                f"cnnpar: waiting for another timed run{holder} to finish (lock {path}); "
                "timed work never overlaps"
            )
            fcntl.flock(fd, fcntl.LOCK_EX)
        waited = time.perf_counter() - start
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield waited
    finally:
        os.close(fd)  # releases the lock


def _read_holder(fd: int) -> str:
    with contextlib.suppress(OSError, ValueError):
        pid = int(os.pread(fd, 32, 0).decode().strip())
        return f" (pid {pid})"
    return ""


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- CPU accounting ----------------------------------------------------------------------------


def available_cpus() -> set[int]:
    """The CPUs this process may run on (taskset, cgroup cpusets, SLURM's binding)."""
    try:
        return set(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return set(range(os.cpu_count() or 1))


def proc_stat_ticks(cpus: set[int], text: str | None = None) -> tuple[int, int] | None:
    """(busy, steal) clock ticks summed over `cpus` from /proc/stat, or None if unreadable.

    busy = user + nice + system + irq + softirq (guest time is already inside user).
    """
    if text is None:
        try:
            text = Path("/proc/stat").read_text()
        except OSError:
            return None
    busy = steal = 0
    for line in text.splitlines():
        name, _, rest = line.partition(" ")
        if not name.startswith("cpu") or name == "cpu" or int(name[3:]) not in cpus:
            continue
        values = [int(v) for v in rest.split()]
        user, nice, system, _idle, _iowait, irq, softirq = values[:7]
        busy += user + nice + system + irq + softirq
        steal += values[7] if len(values) > 7 else 0
    return busy, steal


def own_cpu_seconds() -> float:
    """CPU seconds of this process, its waited-for children and its live descendants."""
    import psutil

    me = psutil.Process()
    total = sum(me.cpu_times()[:4])  # user, system, children_user, children_system
    for child in me.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            total += sum(child.cpu_times()[:2])
    return total


# --- the probes ------------------------------------------------------------------------------


def cpu_probe(threads: int) -> float:
    """Best sgemm GFLOP/s at `threads` threads; this process's thread count is restored after."""
    import torch

    from cnnpar.measure.roofline import sgemm_peak
    from cnnpar.measure.threads import set_threads

    before = torch.get_num_threads()
    try:
        set_threads(threads)
        a, b = torch.randn(PROBE_N, PROBE_N), torch.randn(PROBE_N, PROBE_N)
        start = time.perf_counter()
        while time.perf_counter() - start < PROBE_WARMUP_S:
            torch.mm(a, b)
        return float(sgemm_peak(threads, n=PROBE_N, repeats=PROBE_REPEATS)["sgemm_gflops"])
    finally:
        set_threads(before)


def gpu_probe() -> tuple[float | None, str]:
    """Best float32 matmul GFLOP/s on the first CUDA device (TF32 off), or None without one."""
    try:
        import torch
    except ImportError:  # pragma: no cover
        return None, "cuda (no torch)"
    if not torch.cuda.is_available():
        return None, "cuda (torch sees no GPU)"
    allow = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        a = torch.randn(GPU_PROBE_N, GPU_PROBE_N, device="cuda")
        b = torch.randn(GPU_PROBE_N, GPU_PROBE_N, device="cuda")
        torch.mm(a, b)  # warm-up: cuBLAS handle and kernel selection
        torch.cuda.synchronize()
        best = float("inf")
        for _ in range(PROBE_REPEATS):
            start = time.perf_counter()
            torch.mm(a, b)
            torch.cuda.synchronize()
            best = min(best, time.perf_counter() - start)
        return 2.0 * GPU_PROBE_N**3 / best / 1e9, torch.cuda.get_device_name(0)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = allow


# --- the region ------------------------------------------------------------------------------


class TimedRegion:
    """`with TimedRegion(threads=2) as region: <timed work>`; then `region.result`.

    `threads` is the run's own parallelism (what the probe runs at); `device` "cuda" probes the
    GPU instead. `lock` None skips the lock (tests of this class only).
    """

    def __init__(
        self,
        threads: int,
        device: str = "cpu",
        limits: Limits | None = None,
        lock: str | os.PathLike[str] | None = DEFAULT_LOCK,
        warn: Callable[[str], None] | None = None,
        probe: Callable[[], tuple[float | None, str]] | None = None,
    ) -> None:
        self.threads, self.device = threads, device
        self.limits = limits or Limits()
        self.lock = lock
        self.warn = warn or _stderr
        self.probe = probe or self._default_probe
        self.result: Interference | None = None
        self._stack = contextlib.ExitStack()

    def _default_probe(self) -> tuple[float | None, str]:
        if self.device == "cuda":
            return gpu_probe()
        return cpu_probe(self.threads), f"cpu ({self.threads} thread{'s' * (self.threads > 1)})"

    def __enter__(self) -> TimedRegion:
        self._lock_wait = 0.0
        if self.lock is not None:
            self._lock_wait = self._stack.enter_context(timing_lock(self.lock, self.warn))
        try:
            self._before, self._device_name = self.probe()
            self._cpus = available_cpus()
            self._ticks0 = proc_stat_ticks(self._cpus)
            self._own0 = own_cpu_seconds()
            self._t0 = time.perf_counter()
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        try:
            if exc_type is None:
                seconds = time.perf_counter() - self._t0
                ticks1 = proc_stat_ticks(self._cpus)
                own = own_cpu_seconds() - self._own0
                after, _ = self.probe()
                self.result = assess(
                    seconds=seconds,
                    cpus=len(self._cpus),
                    ticks=(self._ticks0, ticks1),
                    own_cpu_s=own,
                    probes=(self._before, after),
                    device=self._device_name,
                    lock_wait_s=self._lock_wait,
                    limits=self.limits,
                )
                if self.result.flagged:
                    self.warn(
                        "cnnpar: warning: this run's timings are disturbed: "
                        + "; ".join(self.result.reasons)
                    )
        finally:
            self._stack.close()


def assess(
    *,
    seconds: float,
    cpus: int,
    ticks: tuple[tuple[int, int] | None, tuple[int, int] | None],
    own_cpu_s: float,
    probes: tuple[float | None, float | None],
    device: str,
    lock_wait_s: float,
    limits: Limits,
    hz: int | None = None,
) -> Interference:
    """The interference record of a region from its raw readings."""
    hz = hz or os.sysconf("SC_CLK_TCK")
    capacity = max(seconds, 1e-9) * cpus
    others = steal = None
    start, end = ticks
    if start is not None and end is not None:
        busy_s = (end[0] - start[0]) / hz
        others = max(busy_s - own_cpu_s, 0.0) / capacity
        steal = max(end[1] - start[1], 0) / hz / capacity
    before, after = probes
    change = roofline = None
    if before and after:
        roofline = max(before, after)
        change = abs(after - before) / roofline
    reasons = []
    if others is not None and others + (steal or 0.0) > limits.max_others_share:
        what = f"other processes took {100 * others:.0f}% of its {cpus} CPU(s)"
        if steal and steal >= 0.005:
            what += f" and the hypervisor stole {100 * steal:.0f}%"
        reasons.append(f"{what} (limit {100 * limits.max_others_share:.0f}%)")
    if change is not None and change > limits.max_probe_change:
        reasons.append(
            f"the matmul probe went from {before:.1f} to {after:.1f} GFLOP/s "
            f"({100 * change:.0f}% apart, limit {100 * limits.max_probe_change:.0f}%)"
        )
    return Interference(
        seconds=seconds,
        cpus=cpus,
        others_cpu_share=others,
        steal_share=steal,
        probe_before_gflops=before,
        probe_after_gflops=after,
        probe_change=change,
        roofline_gflops=roofline,
        roofline_device=device,
        lock_wait_s=lock_wait_s,
        max_others_share=limits.max_others_share,
        max_probe_change=limits.max_probe_change,
        flagged=bool(reasons),
        reasons=reasons,
    )
