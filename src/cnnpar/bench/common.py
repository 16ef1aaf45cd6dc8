"""What both benches share: one row type, the `--csv` check, and writing the CSV and run record.

`bench train` times engines in one process (thread counts interleaved, paired ratios);
`bench classify` runs each variant as a fresh `cnnpar classify` process. Both end in the same
`BenchRow`s, so one CSV reader and one run-record reader serve both.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from cnnpar.errors import CnnparError
from cnnpar.record import Parallelism, RunRecord

BenchName = Literal["train", "classify"]


class BenchError(CnnparError):
    """A bench argument is unusable, or a benchmark variant failed."""


@dataclass
class BenchRow:
    """One measured variant. Rates come from `items` (images or cells per timed repeat) over the
    repeat times: rate = items / median_s, and the rate quartiles from the time quartiles
    (rate_q1 = items / q3_s, the slower side)."""

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
    roofline_gflops: float | None  # sgemm at parallelism_effective cores (None on a GPU)
    roofline_fraction: float | None
    speedup: float | None  # rate over the `speedup_over` reference (None on the reference)
    speedup_q1: float | None  # only where rounds were paired (bench train)
    speedup_q3: float | None
    speedup_over: str | None
    extra: dict[str, Any] = field(default_factory=dict)  # bench-specific; CSV columns at the end

    @property
    def iqr_s(self) -> float:
        return self.q3_s - self.q1_s

    def csv_row(self) -> dict[str, Any]:
        row = asdict(self)
        extra = row.pop("extra")
        return {**row, "iqr_s": self.iqr_s, **extra}


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


def write_results(
    rows: Sequence[BenchRow],
    csv_path: str | os.PathLike[str],
    params: Mapping[str, Any],
    results: Mapping[str, Any] | None = None,
) -> RunRecord:
    """Write the rows to `csv_path` and a run record (`run.json`) beside it, the record last,
    both or neither (`io.run_directory`: other files in that directory are left alone).

    `params` are the bench's arguments; `results` bench-specific summaries added to the common
    ones (row count, best variant). The record's parallelism is the most any row asked for and
    ran with.
    """
    from cnnpar import io
    from cnnpar.measure.environment import environment

    if not rows:
        raise BenchError("no rows measured; nothing to write")
    path = Path(csv_path)
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
        outputs=[path.name],
        environment=environment().as_dict(),
    )
    with io.run_directory(path.absolute().parent, replace=False) as tmp:
        io.write_csv(tmp / path.name, [r.csv_row() for r in rows])
        record.write(tmp)
    return record
