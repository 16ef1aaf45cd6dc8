"""The bandwidth roof: the memory bandwidth a run's threads reach, STREAM's triad.

The kernel is McCalpin's STREAM triad (https://www.cs.virginia.edu/stream/) in float32,

    a[i] = b[i] + s * c[i]        a, b, c: (n,) float32, C-contiguous; s: float32 scalar

and bytes are counted as STREAM counts them: 3 arrays × 4 bytes per element and pass (2 reads,
1 write). The write-allocate read a cache performs before it writes `a` is not counted, so on
most CPUs the traffic that really moves is 4/3 of what is counted; the roof is the counted
rate, as STREAM reports it. A pass alternates the roles of `a` and `b` (`b = a + s·c` on odd
passes), so no pass can be optimised away and every pass moves the same bytes.

Each of the run's threads streams its own three arrays, allocated and first touched by that
thread (local to its NUMA node), through a numba-compiled loop that releases the GIL; threads
start each round together and a round's rate is all threads' bytes over the span from the
first start to the last end. The probe reports the best round.

Two working sets (`cpu_bandwidth`):

- cache-resident: per thread, half of its share of the L2 cache (the L2's size over the CPUs
  that share it, read from /sys/devices/system/cpu/cpu0/cache; `DEFAULT_L2_BYTES` where that is
  unreadable), so the three arrays stay in L2 between passes;
- main memory: all threads' arrays together `MEMORY_PROBE_BYTES` (256 MiB), several times the
  last-level cache of most machines. STREAM asks for four times the caches; where a machine has
  more (large-cache server parts, or a VM that reports its host's whole L3), the probe may
  partly hit in that cache and read high. A 2-vCPU KVM guest reporting a 480 MiB L3 read the
  same rate at 256 MiB as at 1 GiB (its share of the L3 held less than 128 MiB); 1 GiB would
  cost seconds of page faults per probe.

A GPU run measures its device memory only (`gpu_bandwidth`), with torch's fused
`add(b, c, alpha=s, out=a)`: a cache-resident probe on a GPU would time kernel launches.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

BYTES_PER_ELEMENT = 3 * 4  # a triad moves 3 float32 arrays: 2 reads and 1 write (STREAM's count)
SCALAR = np.float32(1e-3)  # small, so 10^6 passes stay far from overflow and denormals
CACHE_DIR = Path("/sys/devices/system/cpu/cpu0/cache")
DEFAULT_L2_BYTES = 1 << 20  # 1 MiB per CPU: Skylake-SP and later Xeons, Zen 4 (when unreadable)
MEMORY_PROBE_BYTES = 256 << 20  # the main-memory working set: all arrays of all threads
CACHE_PROBE_S = 0.08  # timed rounds of each probe, after allocation and one warm-up pass
MEMORY_PROBE_S = 0.1
ROUND_S = 0.01  # a round of the cache probe repeats passes for about this long
MIN_ROUNDS = 2


@dataclass(frozen=True)
class Bandwidth:
    """One bandwidth probe at one width, in GB/s (10^9 bytes/s, STREAM's triad count).

    `cache_bytes` is the capacity of the cache the cache-resident probe ran in: the L2 share of
    every thread together (the probe's working set is half of it); None where no cache probe
    ran (GPU). `memory_bytes` is the main-memory probe's working set, all arrays together."""

    cache_gbs: float | None
    memory_gbs: float | None
    cache_bytes: int | None
    memory_bytes: int | None


# --- the caches -----------------------------------------------------------------------------


def _size(text: str) -> int:
    """sysfs cache size ('2048K', '480M') in bytes."""
    text = text.strip().upper()
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
    return int(text.rstrip("KMG")) * scale


def _cpu_count(cpu_list: str) -> int:
    """CPUs in a sysfs list such as '0-3,8'."""
    count = 0
    for part in cpu_list.strip().split(","):
        low, _, high = part.partition("-")
        count += int(high or low) - int(low) + 1
    return count


def cache_levels(root: Path = CACHE_DIR) -> dict[int, tuple[int, int]]:
    """{level: (size in bytes, CPUs sharing it)} of the data and unified caches of cpu0, from
    sysfs; {} where it cannot be read (not Linux, a container hiding /sys)."""
    levels: dict[int, tuple[int, int]] = {}
    try:
        for index in sorted(root.glob("index*")):
            if (index / "type").read_text().strip() == "Instruction":
                continue
            level = int((index / "level").read_text())
            shared = _cpu_count((index / "shared_cpu_list").read_text())
            levels[level] = (_size((index / "size").read_text()), max(shared, 1))
    except (OSError, ValueError):
        return {}
    return levels


def l2_share_bytes(levels: dict[int, tuple[int, int]]) -> int:
    """One CPU's share of its L2: its size over the CPUs that share it."""
    if 2 not in levels:
        return DEFAULT_L2_BYTES
    size, shared = levels[2]
    return size // shared


# --- the kernel -----------------------------------------------------------------------------


@cache
def triad_kernel() -> Callable[..., None] | None:
    """`kernel(a, b, c, s, passes)`, compiled by numba (nogil, so threads run it side by side;
    no parallel loop, so numba's threading layer never starts); None where numba cannot compile
    (its JIT disabled, numba unusable): a triad interpreted by Python would measure the
    interpreter, not the memory, and a missing roof must not fail the run it guards."""
    from cnnpar.measure import numba_settings

    try:
        numba = numba_settings.load()
    except numba_settings.NumbaSettingError:
        return None
    if numba.config.DISABLE_JIT:
        return None

    def triad(a: Any, b: Any, c: Any, s: Any, passes: int) -> None:  # pragma: no cover - jitted
        for p in range(passes):
            if p % 2 == 0:
                for i in range(a.size):
                    a[i] = b[i] + s * c[i]
            else:
                for i in range(b.size):
                    b[i] = a[i] + s * c[i]

    signature = "void(float32[::1], float32[::1], float32[::1], float32, int64)"
    try:
        return numba.njit(signature, nogil=True, cache=False)(triad)
    except Exception:  # numba's compile errors share no base class
        return None


def triad_bytes(elements: int, passes: int = 1, threads: int = 1) -> int:
    """Bytes a triad over `elements` float32 per thread moves, STREAM's count: 12 per element."""
    return BYTES_PER_ELEMENT * elements * passes * threads


# --- the probe -----------------------------------------------------------------------------


def triad_gbs(
    threads: int,
    elements: int,
    budget_s: float,
    kernel: Callable[..., None] | None = None,
    round_s: float = ROUND_S,
) -> float:
    """Best triad rate in GB/s of `threads` threads, each over its own `elements`-long arrays,
    over rounds for about `budget_s` (at least MIN_ROUNDS). A round repeats passes for about
    `round_s` (a pass over a cache-resident array is microseconds, shorter than starting a
    round), or one pass where that is longer."""
    kernel = kernel or triad_kernel()
    if kernel is None:
        raise RuntimeError("no compiled triad kernel (numba's JIT is off or numba cannot load)")
    if threads < 1 or elements < 1:
        raise ValueError(f"threads and elements must be >= 1 (got {threads}, {elements})")
    barrier = threading.Barrier(threads + 1)
    spans: list[list[tuple[float, float]]] = [[] for _ in range(threads)]
    state: dict[str, Any] = {"passes": 1, "go": True, "error": None}

    def worker(k: int) -> None:
        try:
            # Allocated and first touched here: the pages live on this thread's NUMA node.
            a = np.zeros(elements, np.float32)
            b = np.ones(elements, np.float32)
            c = np.full(elements, 0.5, np.float32)
            kernel(a, b, c, SCALAR, 1)  # warm-up: page tables, caches
            while True:
                barrier.wait()
                if not state["go"]:
                    return
                start = time.perf_counter()
                kernel(a, b, c, SCALAR, state["passes"])
                spans[k].append((start, time.perf_counter()))
                barrier.wait()
        except threading.BrokenBarrierError:
            return
        except BaseException as err:  # raised again in the caller's thread
            state["error"] = err
            barrier.abort()

    pool = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(threads)]
    for thread in pool:
        thread.start()
    best = 0.0
    try:
        calibrated, timed, start = False, 0, time.perf_counter()
        while timed < MIN_ROUNDS or time.perf_counter() - start < budget_s:
            barrier.wait()  # the round starts
            barrier.wait()  # every thread is done
            seconds = max(s[-1][1] for s in spans) - min(s[-1][0] for s in spans)
            seconds = max(seconds, 1e-9)
            if not calibrated:  # the first round sets the passes per round
                calibrated = True
                passes = max(1, math.ceil(round_s / seconds))
                if passes > 1:  # one pass was shorter than a round should be: not counted
                    state["passes"] = passes
                    continue
            best = max(best, triad_bytes(elements, state["passes"], threads) / seconds)
            timed += 1
        state["go"] = False
        barrier.wait()
    except threading.BrokenBarrierError:
        pass
    finally:
        for thread in pool:
            thread.join()
    if state["error"] is not None:
        raise state["error"]
    return best / 1e9


def cpu_bandwidth(threads: int, levels: dict[int, tuple[int, int]] | None = None) -> Bandwidth:
    """The cache-resident and main-memory triad rates of `threads` threads (module docstring);
    rates None where no compiled kernel is available."""
    levels = cache_levels() if levels is None else levels
    share = l2_share_bytes(levels)
    per_thread = max(1, share // 2 // BYTES_PER_ELEMENT)
    per_thread_memory = max(1, MEMORY_PROBE_BYTES // threads // BYTES_PER_ELEMENT)
    cache_gbs = memory_gbs = None
    if triad_kernel() is not None:
        cache_gbs = triad_gbs(threads, per_thread, CACHE_PROBE_S)
        memory_gbs = triad_gbs(threads, per_thread_memory, MEMORY_PROBE_S, round_s=0.0)
    return Bandwidth(
        cache_gbs=cache_gbs,
        memory_gbs=memory_gbs,
        cache_bytes=share * threads,
        memory_bytes=triad_bytes(per_thread_memory, threads=threads),
    )


def gpu_bandwidth(memory_bytes: int = MEMORY_PROBE_BYTES, repeats: int = 5) -> Bandwidth:
    """The device-memory triad rate of the first CUDA device (torch's fused add), best of
    `repeats`; rates None without a GPU. No cache-resident probe (module docstring)."""
    try:
        import torch
    except ImportError:  # pragma: no cover
        return Bandwidth(None, None, None, None)
    if not torch.cuda.is_available():
        return Bandwidth(None, None, None, None)
    n = memory_bytes // BYTES_PER_ELEMENT
    a = torch.zeros(n, device="cuda")
    b = torch.ones(n, device="cuda")
    c = torch.full((n,), 0.5, device="cuda")
    torch.add(b, c, alpha=float(SCALAR), out=a)  # warm-up
    torch.cuda.synchronize()
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        torch.add(b, c, alpha=float(SCALAR), out=a)
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    del a, b, c
    return Bandwidth(None, triad_bytes(n) / best / 1e9, None, triad_bytes(n))
