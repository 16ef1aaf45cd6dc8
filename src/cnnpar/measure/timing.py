"""One way to time things, so every number in a report was measured the same way.

- `measure` runs warm-up calls outside the timed region, then `repeats` timed calls with
  `time.perf_counter`, calling a synchronise hook (e.g. `torch.cuda.synchronize`) before each
  clock read, and keeps every raw sample. `measure_interleaved` does the same for cases that
  are to be compared, alternating them round by round, for paired ratios
  (`intervals.paired_ratio_interval`).
- `quartiles` is the one median/IQR summary every table and bench uses.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

K = TypeVar("K")


def quartiles(values: Iterable[float]) -> tuple[float, float, float]:
    """Median, first and third quartile (numpy's linear interpolation)."""
    q1, median, q3 = np.percentile(np.asarray(list(values), dtype=float), [25, 50, 75])
    return float(median), float(q1), float(q3)


@dataclass(frozen=True)
class Measurement:
    samples: list[float]  # seconds, one per timed repeat
    warmup: int

    @property
    def median(self) -> float:
        return quartiles(self.samples)[0]

    @property
    def q1(self) -> float:
        return quartiles(self.samples)[1]

    @property
    def q3(self) -> float:
        return quartiles(self.samples)[2]

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
    (`intervals.paired_ratio_interval`) to compare. `setup(key)` runs before each call of that
    case, untimed.
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
