"""What both benches share: one row type, paired ratios with their intervals, the `--csv`
check, and writing the CSVs and run record.

Both benches time their variants in interleaved rounds (every variant once per round, the order
reversed every other round), so sample i of every variant in one interleaved set comes from the
same stretch of machine time. Every ratio is formed round by round from those paired samples and
summarised by `cnnpar.measure.intervals.paired_ratio_interval`: the geometric mean over rounds
with a Student-t 95% interval. `bench train` runs the engines of one configuration in one
process; `bench classify` runs each variant as a fresh `cnnpar classify` process. Both end in the
same `BenchRow`s, so one CSV reader and one run-record reader serve both.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from cnnpar.errors import CnnparError
from cnnpar.measure.intervals import Interval, paired_ratio_interval
from cnnpar.record import Parallelism, RunRecord

BenchName = Literal["train", "classify"]


class BenchError(CnnparError):
    """A bench argument is unusable, or a benchmark variant failed."""


@dataclass
class BenchRow:
    """One measured variant. Rates come from `items` (images or cells per timed repeat) over the
    repeat times: rate = items / median_s, and the rate quartiles from the time quartiles
    (rate_q1 = items / q3_s, the slower side). Ratios between variants (`speedup`) come from
    the per-round samples in `rounds`, paired by round."""

    bench: BenchName
    variant: str  # the label printed for it
    engine: str  # the training engine (train) or the classify mode (classify)
    model: str
    filters: int | None  # TinyCNN conv filters F (train)
    grid: str | None  # mosaic "ROWSxCOLS" (classify)
    batch_size: int
    parallelism_requested: int  # threads (train) or workers (classify) asked for
    parallelism_effective: int  # cores' worth that ran: processes x threads per process
    processes: int
    repeats: int
    median_s: float
    q1_s: float
    q3_s: float
    items: int  # images or cells per timed repeat
    rate: float
    rate_q1: float
    rate_q3: float
    rate_unit: str  # "images/s" or "cells/s"
    gflops: float  # achieved: rate x the model's FLOPs per item
    # sgemm at parallelism_effective cores (None on a GPU); bench classify probes it every
    # round and gives the geometric mean here, its fraction the geometric mean of per-round ones
    roofline_gflops: float | None
    roofline_fraction: float | None
    # Rate over the `speedup_over` reference from paired rounds: the geometric mean of the
    # per-round ratios and its 95% interval (None on the reference; low/high None below 2 rounds)
    speedup: float | None
    speedup_low: float | None
    speedup_high: float | None
    speedup_over: str | None
    extra: dict[str, Any] = field(default_factory=dict)  # bench-specific; CSV columns at the end
    # One dict per timed round, in round order: "seconds" (the sample), optionally
    # "roofline_gflops" (the roofline that round) and bench-specific values. Written to the
    # rounds CSV (one row per variant x round), not to the per-variant CSV.
    rounds: list[dict[str, Any]] = field(default_factory=list)

    @property
    def samples_s(self) -> list[float]:
        return [r["seconds"] for r in self.rounds]

    @property
    def iqr_s(self) -> float:
        return self.q3_s - self.q1_s

    def csv_row(self) -> dict[str, Any]:
        row = asdict(self)
        row.pop("rounds")
        extra = row.pop("extra")
        return {**row, "iqr_s": self.iqr_s, **extra}

    def round_rows(self) -> list[dict[str, Any]]:
        """Tidy rows, one per timed round: the sample, its rate, GFLOP/s and roofline fraction.
        Rows of the same `round` in one interleaved set are the pairs every ratio is built from."""
        gflop_per_item = self.gflops / self.rate
        out = []
        for index, r in enumerate(self.rounds, start=1):
            roof = r.get("roofline_gflops", self.roofline_gflops)
            gflops = gflop_per_item * self.items / r["seconds"]
            out.append(
                {
                    "bench": self.bench,
                    "variant": self.variant,
                    "engine": self.engine,
                    "filters": self.filters,
                    "grid": self.grid,
                    "batch_size": self.batch_size,
                    "parallelism_effective": self.parallelism_effective,
                    "round": index,
                    "items": self.items,
                    "rate_unit": self.rate_unit,
                    **r,
                    "rate": self.items / r["seconds"],
                    "gflops": gflops,
                    "roofline_gflops": roof,
                    "roofline_fraction": gflops / roof if roof else None,
                }
            )
        return out


def paired_rate_ratio(num: BenchRow, den: BenchRow) -> Interval:
    """`num`'s rate over `den`'s, round by round; both rows must come from the same rounds."""
    return paired_ratio_interval(
        [num.items / s for s in num.samples_s], [den.items / s for s in den.samples_s]
    )


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def speedup_fields(interval: Interval | None, over: str | None) -> dict[str, Any]:
    """BenchRow's speedup, speedup_low, speedup_high and speedup_over from a paired ratio."""
    if interval is None:
        return {"speedup": None, "speedup_low": None, "speedup_high": None, "speedup_over": None}
    return {**interval.columns("speedup", missing=None), "speedup_over": over}


def interval_dict(interval: Interval) -> dict[str, Any]:
    """An interval for JSON: NaN (fewer than 2 rounds) becomes null."""
    return interval.as_dict()


def interval_text(interval: Interval, unit: str = "×", digits: int = 2) -> str:
    """`1.72× [1.61, 1.84]`: the estimate and its 95% interval over rounds."""
    return interval.text(f"{{:.{digits}f}}", unit, count="round")


def direction(interval: Interval, above: str = "faster", below: str = "slower") -> str:
    """Which side of 1 the whole interval lies on, in the benches' words."""
    return interval.direction(above, below)


def target_verdict(interval: Interval, goal: float) -> str:
    """'met' when the interval's low end reaches `goal`, 'missed' when its high end is below it,
    else 'not resolved' (the interval straddles the goal, or there is none)."""
    if not interval.resolved:
        return "not resolved"
    if interval.low >= goal:
        return "met"
    if interval.high < goal:
        return "missed"
    return "not resolved"


def target_check(text: str, interval: Interval, goal: float, unit: str) -> dict[str, Any]:
    """One target for the run record: `value` is the estimate, `met` true only on 'met'."""
    verdict = target_verdict(interval, goal)
    return {
        "target": text,
        "value": _finite(interval.estimate),
        "low": _finite(interval.low),
        "high": _finite(interval.high),
        "rounds": interval.n,
        "goal": goal,
        "unit": unit,
        "verdict": verdict,
        "met": verdict == "met",
    }


def rate_fields(items: int, median_s: float, q1_s: float, q3_s: float) -> dict[str, float]:
    """rate, rate_q1, rate_q3 of `items` per repeat from the repeat-time quartiles."""
    return {"rate": items / median_s, "rate_q1": items / q3_s, "rate_q3": items / q1_s}


def check_csv_path(csv_path: str | os.PathLike[str] | None) -> Path | None:
    """Make sure `--csv` can be written before any measuring, so a typo does not cost a whole
    bench run. Nothing is created: a missing directory is made when the rows are written."""
    if csv_path is None:
        return None
    path = Path(csv_path)
    if path.is_dir():
        raise BenchError(f"--csv {path} is a directory; give a file name such as {path}/bench.csv")
    parent = Path(os.path.abspath(path)).parent
    base = parent
    while not base.exists():
        base = base.parent
    if not base.is_dir():
        raise BenchError(f"--csv {path}: {base} is not a directory")
    try:  # a real write: permission bits alone pass read-only mounts and /proc
        os.rmdir(tempfile.mkdtemp(dir=base, prefix=".cnnpar-probe-"))
    except OSError as err:
        reason = err.strerror or err
        if base == parent:
            raise BenchError(f"--csv {path}: cannot write in {parent}: {reason}") from None
        raise BenchError(f"--csv {path}: cannot create directory {parent}: {reason}") from None
    return path


def rounds_csv_path(csv_path: str | os.PathLike[str]) -> Path:
    """Where the per-round samples of `--csv F` go: F's name with `_rounds` before the suffix."""
    path = Path(csv_path)
    return path.with_name(f"{path.stem}_rounds{path.suffix or '.csv'}")


def write_results(
    rows: Sequence[BenchRow],
    csv_path: str | os.PathLike[str],
    params: Mapping[str, Any],
    results: Mapping[str, Any] | None = None,
) -> RunRecord:
    """Write the rows to `csv_path`, their per-round samples to `rounds_csv_path(csv_path)`
    (one row per variant x round) and a run record (`run.json`) beside them, the record last,
    all or none (`io.run_directory`: other files in that directory are left alone).

    `params` are the bench's arguments; `results` bench-specific summaries added to the common
    ones (row count, best variant). The record's parallelism is the most any row asked for and
    ran with.
    """
    from cnnpar import io
    from cnnpar.measure.environment import environment
    from cnnpar.measure.machine import this_machine

    if not rows:
        raise BenchError("no rows measured; nothing to write")
    path = Path(csv_path)
    outputs = [path.name]
    rounds = [line for r in rows for line in r.round_rows()]
    if rounds:
        outputs.append(rounds_csv_path(path).name)
    best = max(rows, key=lambda r: r.rate)
    record = RunRecord(
        command=f"bench-{rows[0].bench}",  # type: ignore[arg-type]
        model=",".join(dict.fromkeys(r.model for r in rows)),
        params=dict(params),
        parallelism=Parallelism(
            requested=max(r.parallelism_requested for r in rows),
            effective=max(r.parallelism_effective for r in rows),
            processes=max(r.processes for r in rows),
        ),
        results={
            "rows": len(rows),
            "rate_unit": best.rate_unit,
            "best_variant": best.variant,
            "best_rate": best.rate,
            "best_gflops": best.gflops,
            "best_roofline_fraction": max(
                (r.roofline_fraction for r in rows if r.roofline_fraction is not None),
                default=None,
            ),
            **(results or {}),
        },
        outputs=outputs,
        environment=environment().as_dict(),
        machine=this_machine(params.get("machine_label")),
    )
    with io.run_directory(path.absolute().parent, replace=False) as tmp:
        io.write_csv(tmp / path.name, [r.csv_row() for r in rows])
        if rounds:
            io.write_csv(tmp / rounds_csv_path(path).name, rounds)
        record.write(tmp)
    return record
