"""One way to time things, so every number in a report was measured the same way.

- `measure` runs warm-up calls outside the timed region, then `repeats` timed calls with
  `time.perf_counter`, calling a synchronise hook (e.g. `torch.cuda.synchronize`) before each
  clock read, and keeps every raw sample. `measure_interleaved` does the same for cases that
  are to be compared, alternating them round by round, for paired ratios
  (`intervals.paired_ratio_interval`). `measure_budget` times calls until a budget of timed
  seconds is spent, each call told when it runs out.
- `alternating` is the one alternating-order rule (ABBA) every paired comparison runs in.
- `quartiles` is the one median/IQR summary every table and bench uses.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

K = TypeVar("K")
T = TypeVar("T")


def alternating(items: Sequence[T], round_index: int) -> list[T]:
    """`items` in the order round `round_index` runs them: as given in even rounds, reversed in
    odd ones (ABBA), so drift in the machine's speed (a busy neighbour on a shared host) falls
    on every item alike rather than on whichever runs last."""
    return list(items) if round_index % 2 == 0 else list(items)[::-1]


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


def measure_budget(
    fn: Callable[[float], Any],
    budget_s: float,
    max_repeats: int,
    sync: Callable[[], None] | None = None,
    agree: Callable[[bool], bool] | None = None,
) -> Measurement:
    """Time calls `fn(deadline)` until `budget_s` seconds of timed calls, or `max_repeats`
    calls; no warm-up. The first call always runs.

    `deadline` is the `time.perf_counter()` reading at which the budget runs out: `fn` starts
    no new work after it, so the last call may be cut short (it returns what it did). Whether
    to make another call is decided by `agree(spent >= budget_s)` where several processes
    (torch.distributed ranks) must make the same calls: it returns True when any wants to stop.
    `sync` runs before each clock read, as in `measure`.
    Raises ValueError for a `budget_s` that is not a positive finite number or `max_repeats` < 1.
    """
    if not (budget_s > 0 and budget_s < float("inf")):
        raise ValueError(f"budget_s must be a positive finite number (got {budget_s})")
    if max_repeats < 1:
        raise ValueError(f"max_repeats must be >= 1 (got {max_repeats})")
    sync = sync or (lambda: None)
    agree = agree or (lambda stop: stop)
    samples: list[float] = []
    spent = 0.0
    while len(samples) < max_repeats and not (samples and agree(spent >= budget_s)):
        sync()
        start = time.perf_counter()
        fn(start + budget_s - spent)
        sync()
        samples.append(time.perf_counter() - start)
        spent += samples[-1]
    return Measurement(samples=samples, warmup=0)


def measure_interleaved(
    cases: Mapping[K, Callable[[], Any]],
    repeats: int = 5,
    warmup: int = 1,
    sync: Callable[[], None] | None = None,
    setup: Callable[[K], Any] | None = None,
) -> dict[K, Measurement]:
    """Time several cases round by round, for comparing them with each other.

    Each round runs every case once, in the order `alternating` gives it (ABBA). Sample i of
    every case comes from round i: pair them (`intervals.paired_ratio_interval`) to compare.
    `setup(key)` runs before each call of that case, untimed.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1 (got {repeats})")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0 (got {warmup})")
    sync = sync or (lambda: None)
    keys = list(cases)
    samples: dict[K, list[float]] = {key: [] for key in keys}
    for round_index in range(warmup + repeats):
        for key in alternating(keys, round_index):
            if setup is not None:
                setup(key)
            sync()
            start = time.perf_counter()
            cases[key]()
            sync()
            if round_index >= warmup:
                samples[key].append(time.perf_counter() - start)
    return {key: Measurement(samples=samples[key], warmup=warmup) for key in keys}
