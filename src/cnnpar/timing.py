"""One way to time things, so every number in a report was measured the same way.

- `set_threads` pins every thread pool we know of (numba, torch, BLAS) and returns the
  *effective* counts read back from the libraries, not the requested ones.
- `measure` runs warm-up calls outside the timed region, then `repeats` timed calls with
  `time.perf_counter`, calling a synchronise hook (e.g. `torch.cuda.synchronize`) before each
  clock read, and keeps every raw sample. `measure_interleaved` does the same for cases that
  are to be compared, alternating them round by round; `paired_ratio` compares two of them.
- `environment` is the metadata record attached to every result row.
- `sgemm_peak` measures the float32 matmul rate that reports use as the roofline.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

K = TypeVar("K")

BLAS_ENV_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)


@dataclass(frozen=True)
class Measurement:
    samples: list[float]  # seconds, one per timed repeat
    warmup: int

    @property
    def median(self) -> float:
        return float(np.median(self.samples))

    @property
    def q1(self) -> float:
        return float(np.percentile(self.samples, 25))

    @property
    def q3(self) -> float:
        return float(np.percentile(self.samples, 75))

    @property
    def iqr(self) -> float:
        return self.q3 - self.q1

    @property
    def min(self) -> float:
        return float(np.min(self.samples))

    def summary(self) -> dict[str, float | int]:
        return {
            "median_s": self.median,
            "iqr_s": self.iqr,
            "q1_s": self.q1,
            "q3_s": self.q3,
            "min_s": self.min,
            "repeats": len(self.samples),
            "warmup": self.warmup,
        }


def measure(
    fn: Callable[[], Any],
    repeats: int = 5,
    warmup: int = 1,
    sync: Callable[[], None] | None = None,
    setup: Callable[[], Any] | None = None,
) -> Measurement:
    """Time `fn()` `repeats` times after `warmup` untimed calls.

    `setup` runs before every call (warm-up included), outside the timed region.
    `sync` runs before each clock read so asynchronous GPU work is counted where it belongs.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1 (got {repeats})")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0 (got {warmup})")
    sync = sync or (lambda: None)
    for _ in range(warmup):
        if setup is not None:
            setup()
        fn()
        sync()
    samples = []
    for _ in range(repeats):
        if setup is not None:
            setup()
        sync()
        start = time.perf_counter()
        fn()
        sync()
        samples.append(time.perf_counter() - start)
    return Measurement(samples=samples, warmup=warmup)


def measure_interleaved(
    cases: Mapping[K, Callable[[], Any]],
    repeats: int = 5,
    warmup: int = 1,
    sync: Callable[[], None] | None = None,
    setup: Callable[[K], Any] | None = None,
) -> dict[K, Measurement]:
    """Time several cases round by round, for comparing them with each other.

    Each round runs every case once, in an order that reverses from round to round (ABBA), so
    drift in the machine's speed (a busy neighbour on a shared host) falls on every case alike
    rather than on whichever ran last. Sample i of every case comes from round i: pair them
    (`paired_ratio`) to compare. `setup(key)` runs before each call of that case, untimed.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1 (got {repeats})")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0 (got {warmup})")
    sync = sync or (lambda: None)
    keys = list(cases)
    samples: dict[K, list[float]] = {key: [] for key in keys}
    for round_index in range(warmup + repeats):
        for key in keys if round_index % 2 == 0 else keys[::-1]:
            if setup is not None:
                setup(key)
            sync()
            start = time.perf_counter()
            cases[key]()
            sync()
            if round_index >= warmup:
                samples[key].append(time.perf_counter() - start)
    return {key: Measurement(samples=samples[key], warmup=warmup) for key in keys}


def paired_ratio(slow: Measurement, fast: Measurement) -> tuple[float, float, float]:
    """Median, first and third quartile of slow/fast time ratios taken round by round
    (from `measure_interleaved`): a speedup that host drift between rounds does not bias."""
    if len(slow.samples) != len(fast.samples):
        raise ValueError("paired_ratio needs samples from the same rounds")
    ratios = np.asarray(slow.samples) / np.asarray(fast.samples)
    q1, median, q3 = np.percentile(ratios, [25, 50, 75])
    return float(median), float(q1), float(q3)


def set_threads(threads: int) -> dict[str, int | None]:
    """Pin numba, torch and BLAS pools to `threads`; return the effective counts."""
    if threads < 1:
        raise ValueError(f"threads must be >= 1 (got {threads})")
    for var in BLAS_ENV_VARS:
        os.environ[var] = str(threads)
    # NUMBA_NUM_THREADS caps the pool size when numba starts; size it for the largest count we
    # may ask for later in this process, then lower the active count with set_num_threads.
    if "numba" not in sys.modules:
        ceiling = max(threads, os.cpu_count() or 1, int(os.environ.get("NUMBA_NUM_THREADS") or 0))
        os.environ["NUMBA_NUM_THREADS"] = str(ceiling)
    import numba
    import torch

    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    torch.set_num_threads(threads)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(threads)
    except ImportError:  # pragma: no cover - threadpoolctl ships with our deps
        pass
    return effective_threads()


def effective_threads() -> dict[str, int | None]:
    """Thread counts as the libraries report them now."""
    counts: dict[str, int | None] = {}
    import numba
    import torch

    counts["numba_threads"] = int(numba.get_num_threads())
    counts["torch_threads"] = int(torch.get_num_threads())
    counts["torch_interop_threads"] = int(torch.get_num_interop_threads())
    try:
        from threadpoolctl import threadpool_info

        blas = [p["num_threads"] for p in threadpool_info() if p.get("user_api") == "blas"]
        counts["blas_threads"] = int(max(blas)) if blas else None
    except ImportError:  # pragma: no cover
        counts["blas_threads"] = None
    return counts


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
    cpu_model: str
    logical_cores: int
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
    malloc: str = field(default_factory=lambda: os.environ.get("LD_PRELOAD", "") or "glibc")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def environment() -> Environment:
    return Environment(
        cpu_model=_cpu_model(),
        logical_cores=os.cpu_count() or 1,
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


def sgemm_peak(threads: int, n: int = 1024, repeats: int = 5) -> dict[str, float]:
    """Best float32 GEMM rate (GFLOP/s) of numpy's BLAS and torch at `threads` threads."""
    import torch

    set_threads(threads)
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    flops = 2.0 * n**3
    numpy_s = measure(lambda: a @ b, repeats=repeats, warmup=1).min
    torch_s = measure(lambda: torch.mm(ta, tb), repeats=repeats, warmup=1).min
    rates = {"numpy": flops / numpy_s / 1e9, "torch": flops / torch_s / 1e9}
    return {
        "sgemm_threads": threads,
        "sgemm_n": n,
        "sgemm_gflops_numpy": rates["numpy"],
        "sgemm_gflops_torch": rates["torch"],
        "sgemm_gflops": max(rates.values()),
    }
