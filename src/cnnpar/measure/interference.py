"""Guarding a timed region: no overlap with other timed runs, and interference measured.

`TimedRegion` wraps the part of a run whose clock readings go into the study:

1. it takes an exclusive lock (flock) shared by every timed cnnpar run on this machine, so two
   studies, an orphaned job or a hand-run command never time at once, and records the wait;
2. it probes the float32 matmul rate at the run's own thread count (or on its GPU) just before
   and just after, which is the run's compute roof and a witness of the machine's speed, and
   beside it the triad bandwidth those threads reach in their L2 and in main memory (its
   bandwidth roofs, `cnnpar.measure.bandwidth`); a job that times several thread counts
   (interleaved) gets one pair of probes per count, and a count above the CPUs the process may
   use is probed at those CPUs (what can take effect);
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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cnnpar.measure.bandwidth import Bandwidth, cpu_bandwidth, gpu_bandwidth

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
    # "cpu (2 threads)", the GPU's name, or for a run confined to fewer CPUs than it asked for
    # "cpu (1 thread); 2 asked, 1 CPU available" (the probe ran at what could take effect)
    roofline_device: str
    lock_wait_s: float
    max_others_share: float  # the limits this run was judged by
    max_probe_change: float
    flagged: bool
    reasons: list[str] = field(default_factory=list)
    # The bandwidth roofs (cnnpar.measure.bandwidth), GB/s of STREAM's triad at the probe's width,
    # the higher of the probes before and after; None in records from before they were probed
    # and where none ran (no cache probe on a GPU).
    bandwidth_cache_gbs: float | None = None  # arrays resident in the threads' L2
    bandwidth_memory_gbs: float | None = None  # arrays in main memory
    bandwidth_cache_bytes: int | None = None  # the L2 capacity of the probe's threads together
    bandwidth_memory_bytes: int | None = None  # the main-memory probe's working set

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
    """Best sgemm GFLOP/s at `threads` threads; torch's, the BLAS and OpenMP pools' widths and
    the BLAS variables are restored after (an interleaved job probes between its windows)."""
    import torch
    from threadpoolctl import threadpool_limits

    from cnnpar.measure.roofline import sgemm_peak
    from cnnpar.measure.threads import BLAS_ENV_VARS, set_threads

    before = torch.get_num_threads()
    env = {var: os.environ.get(var) for var in BLAS_ENV_VARS}
    try:
        with threadpool_limits(threads):  # on exit, every pool back to its own width
            set_threads(threads)
            a, b = torch.randn(PROBE_N, PROBE_N), torch.randn(PROBE_N, PROBE_N)
            start = time.perf_counter()
            while time.perf_counter() - start < PROBE_WARMUP_S:
                torch.mm(a, b)
            return float(sgemm_peak(threads, n=PROBE_N, repeats=PROBE_REPEATS)["sgemm_gflops"])
    finally:
        torch.set_num_threads(before)
        for var, value in env.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value


def cpu_device(threads: int) -> str:
    """The roofline device of a CPU probe at `threads` threads."""
    return f"cpu ({threads} thread{'s' * (threads > 1)})"


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

    `threads` is the run's own parallelism (what the probe runs at), or the thread counts of a
    job that times several in one region (`train.run_interleaved`): each count is probed at its
    own width, `switch(width)` narrowing the pools first as the job does between its windows,
    and gets its own record in `region.results` (the CPU accounting is the region's, shared).
    A count above the CPUs this process may use (taskset, a cpuset) is probed at those CPUs,
    and its device says so. `region.result` is the widest count's. `device` "cuda" probes the
    GPU instead. `probe(threads)` replaces the default matmul probe and `bandwidth(threads)`
    the default bandwidth probe (tests); `lock` None skips the lock (tests of this class only).
    """

    def __init__(
        self,
        threads: int | Sequence[int],
        device: str = "cpu",
        limits: Limits | None = None,
        lock: str | os.PathLike[str] | None = DEFAULT_LOCK,
        warn: Callable[[str], None] | None = None,
        probe: Callable[[int], tuple[float | None, str]] | None = None,
        switch: Callable[[int], None] | None = None,
        bandwidth: Callable[[int], Bandwidth] | None = None,
    ) -> None:
        self.counts = (threads,) if isinstance(threads, int) else tuple(threads)
        if not self.counts or min(self.counts) < 1:
            raise ValueError(f"threads must be >= 1 (got {threads})")
        self.threads, self.device = max(self.counts), device
        self.limits = limits or Limits()
        self.lock = lock
        self.warn = warn or _stderr
        self.probe = probe or self._default_probe
        self.switch = switch
        self.bandwidth = bandwidth or self._default_bandwidth
        self.results: dict[int, Interference] = {}
        self.result: Interference | None = None
        self._stack = contextlib.ExitStack()

    def _default_probe(self, threads: int) -> tuple[float | None, str]:
        if self.device == "cuda":
            return gpu_probe()
        return cpu_probe(threads), cpu_device(threads)

    def _default_bandwidth(self, threads: int) -> Bandwidth:
        return gpu_bandwidth() if self.device == "cuda" else cpu_bandwidth(threads)

    def _probe_width(self, count: int) -> int:
        """The width `count` is probed at: at most the CPUs this process may use, since more
        threads than CPUs take turns and measure no more than the CPUs do."""
        return min(count, len(self._cpus)) if self.device != "cuda" else count

    def _probe_all(self) -> dict[int, tuple[float | None, str, Bandwidth]]:
        """One matmul and one bandwidth probe per width the counts take effect at, each at that
        width; the pools are left at the widest count's width."""
        probes: dict[int, tuple[float | None, str, Bandwidth]] = {}
        for count in self.counts:
            width = self._probe_width(count)
            if width not in probes:
                if self.switch is not None:
                    self.switch(width)
                probes[width] = (*self.probe(width), self.bandwidth(width))
        if self.switch is not None:
            self.switch(self.threads)
        return probes

    def _device(self, count: int, name: str) -> str:
        width = self._probe_width(count)
        if width == count:
            return name
        cpus = len(self._cpus)
        return f"{name}; {count} asked, {cpus} CPU{'s' * (cpus > 1)} available"

    def __enter__(self) -> TimedRegion:
        self._lock_wait = 0.0
        if self.lock is not None:
            self._lock_wait = self._stack.enter_context(timing_lock(self.lock, self.warn))
        try:
            self._cpus = available_cpus()
            self._before = self._probe_all()
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
                after = self._probe_all()
                for count in self.counts:
                    width = self._probe_width(count)
                    before, name, bandwidth = self._before[width]
                    self.results[count] = assess(
                        seconds=seconds,
                        cpus=len(self._cpus),
                        ticks=(self._ticks0, ticks1),
                        own_cpu_s=own,
                        probes=(before, after[width][0]),
                        bandwidths=(bandwidth, after[width][2]),
                        device=self._device(count, name),
                        lock_wait_s=self._lock_wait,
                        limits=self.limits,
                    )
                self.result = self.results[self.threads]
                for count, result in self.results.items():
                    if result.flagged:
                        at = f" at {count} threads" if len(self.counts) > 1 else ""
                        self.warn(
                            f"cnnpar: warning: this run's timings{at} are disturbed: "
                            + "; ".join(result.reasons)
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
    bandwidths: tuple[Bandwidth | None, Bandwidth | None] = (None, None),
) -> Interference:
    """The interference record of a region from its raw readings; each bandwidth roof is the
    higher of its probes before and after (`bandwidths`), as the compute roof is."""
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
        **_bandwidth_fields(bandwidths),
    )


def _bandwidth_fields(bandwidths: tuple[Bandwidth | None, Bandwidth | None]) -> dict[str, Any]:
    """The Interference fields of a pair of bandwidth probes: the higher rate of each."""
    probes = [b for b in bandwidths if b is not None]

    def best(name: str) -> Any:
        values = [getattr(b, name) for b in probes if getattr(b, name) is not None]
        return max(values) if values else None

    return {
        f"bandwidth_{name}": best(name)
        for name in ("cache_gbs", "memory_gbs", "cache_bytes", "memory_bytes")
    }
