"""What both benches share: the targets and their verdicts, the block loop, the tables and
the printout.

A bench is a small built-in study. The study's plan gives its runs and their order in each
block (`cnnpar.study.plan.family_runs`: config order, reversed in even blocks); the study's run
functions time them, each writing an ordinary run record; the study's tables
(`cnnpar.study.tables.build_tables`) turn those records into rates, speedups and roofline
fractions, each a geometric mean over blocks with a 95% interval. The bench only adds TARGETS
and a short printout.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from cnnpar.errors import CnnparError
from cnnpar.measure.intervals import Interval
from cnnpar.study import plan
from cnnpar.study.kinds import KINDS

MET, MISSED, NOT_RESOLVED = "met", "missed", "not resolved"
# The tables a bench's --out keeps (study.tables.build_tables), beside its run directories.
KEPT_TABLES = ("train", "classify", "jobs", "summary", "comparisons")


class BenchError(CnnparError):
    """A bench argument is unusable (one line, before any work)."""


@dataclass(frozen=True)
class Target:
    """A goal for one summary statistic of one configuration: `statistic` (a summary column
    with `_low`/`_high` bounds: speedup, roofline_fraction) of the summary row of study `study`
    whose columns hold the values in `where` must reach `threshold`."""

    name: str
    study: str  # train | classify
    where: Mapping[str, Any] = field(hash=False)
    statistic: str
    threshold: float


TARGETS = (
    Target(
        "numba TinyCNN training F=8 B=32, 1 thread: >= 40% of its 1-thread compute probe",
        "train",
        {"engine": "numba", "filters": 8, "batch_size": 32, "parallelism_requested": 1},
        "roofline_fraction",
        0.40,
    ),
    Target(
        "numba TinyCNN training F=8 B=32: 2 threads >= 1.6x its 1 thread",
        "train",
        {"engine": "numba", "filters": 8, "batch_size": 32, "parallelism_requested": 2},
        "speedup",
        1.6,
    ),
    Target(
        "MosaicNet classification B=256, 1 worker (sequential): >= 85% of its compute probe",
        "classify",
        {"mode": "sequential", "batch_size": 256, "parallelism_requested": 1},
        "roofline_fraction",
        0.85,
    ),
)


@dataclass(frozen=True)
class Check:
    """A target as measured: its interval over blocks (None: its configuration did not run)."""

    target: Target
    interval: Interval | None
    verdict: str


def verdict(interval: Interval, threshold: float) -> str:
    """'met' when the 95% interval's low end reaches `threshold`, 'missed' when its high end is
    below it, else 'not resolved' (it straddles the threshold, or there is no interval)."""
    if not interval.resolved:
        return NOT_RESOLVED
    if interval.low >= threshold:
        return MET
    return MISSED if interval.high < threshold else NOT_RESOLVED


def target_interval(target: Target, summary: pd.DataFrame) -> Interval | None:
    """The target's statistic over blocks from the study's summary table; None when the bench
    did not measure its configuration."""
    rows = summary[summary["study"] == target.study]
    for column, value in target.where.items():
        rows = rows[rows[column] == value]
    if rows.empty:
        return None
    row = rows.iloc[0]
    return Interval.from_columns(row, target.statistic, n=row["blocks"])


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


def check_out(out: str | os.PathLike[str] | None) -> None:
    """`--out` must be new or an empty directory: records already there would join the tables."""
    if out is None:
        return
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise BenchError(f"--out {path} is not a directory")
    if path.is_dir() and any(path.iterdir()):
        raise BenchError(f"--out {path} is not empty; give a new directory for this bench")


def check_counts(counts: Sequence[int], option: str) -> None:
    """Thread or worker counts: at least one, each >= 1, none twice."""
    from cnnpar.limits import check_parallelism

    if not counts or min(counts) < 1:
        raise BenchError(f"{option} needs counts >= 1 (got {','.join(map(str, counts))})")
    if len(set(counts)) != len(counts):
        raise BenchError(f"{option} lists a count twice ({','.join(map(str, counts))})")
    check_parallelism(max(counts), option)


def check_names(names: Sequence[str], allowed: Sequence[str], option: str) -> None:
    """Engines or modes: at least one, each one the bench can run, none twice."""
    unknown = [n for n in names if n not in allowed]
    if not names or unknown or len(set(names)) != len(names):
        got = ",".join(names) or "nothing"
        raise BenchError(f"{option} {got}: choose distinct names from {', '.join(allowed)}")


def say(line: str) -> None:
    """The benches' default echo: a line to stdout, at once (a bench runs for minutes)."""
    print(line, flush=True)


@contextlib.contextmanager
def output_directory(out: str | os.PathLike[str] | None) -> Iterator[Path]:
    """`out` (created), or a temporary directory removed on exit."""
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
        yield Path(out)
        return
    with tempfile.TemporaryDirectory(prefix="cnnpar-bench-") as tmp:
        yield Path(tmp)


RunOne = Callable[[plan.Run, int, Path], None]  # (run, block, its run directory's stem)


def run_blocks(
    kind: str,
    configs: Sequence[Mapping[str, Any]],
    blocks: int,
    run_one: RunOne,
    out: Path,
    echo: Callable[[str], None],
) -> None:
    """Every family's runs in every block, in the plan's order (blocks outermost); `run_one`
    runs one of them into a directory named from the stem it is given."""
    for block in range(1, blocks + 1):
        for family in plan.families(configs, kind):
            members = [c for c in configs if plan.family_of(c, kind) == tuple(family.values())]
            name = "-".join(f"{k}{v}" for k, v in family.items())
            for index, run in enumerate(plan.family_runs(kind, members, block), start=1):
                echo(f"block {block}/{blocks}: {run.label()}")
                run_one(run, block, out / f"block{block}" / name / f"{index:02d}-{run.subject}")


def finish(
    kind: str,
    out: Path,
    keep: bool,
    csv_path: Path | None,
    cpu: str,
    echo: Callable[[str], None],
) -> tuple[pd.DataFrame, list[Check]]:
    """The study's tables over the bench's run records (kept in `out`/tables when `keep`),
    the summary rows of this kind written to `csv_path`, and both printed: one line per
    configuration, then this kind's targets on `cpu`. Returns the summary rows and the
    targets' checks."""
    from cnnpar.study.tables import build_tables, write_frame

    names = {name: out / "tables" / f"{name}.csv" for name in KEPT_TABLES} if keep else {}
    summary = build_tables(sorted(out.rglob("run.json")), names)["summary"]
    summary = summary[summary["study"] == kind].reset_index(drop=True)
    if csv_path is not None:
        write_frame(csv_path, summary)
    checked = []
    for target in (t for t in TARGETS if t.study == kind):
        interval = target_interval(target, summary)
        result = NOT_RESOLVED if interval is None else verdict(interval, target.threshold)
        checked.append(Check(target, interval, result))
    echo("")
    _print_summary(kind, summary, echo)
    echo("")
    _print_targets(checked, cpu, echo)
    written = [str(p) for p in (out / "tables" if keep else None, csv_path) if p is not None]
    if written:
        echo(f"wrote {' and '.join(written)}")
    return summary, checked


def _print_summary(kind: str, summary: pd.DataFrame, echo: Callable[[str], None]) -> None:
    """One line per configuration: rate, speedup over its baseline and roofline fraction,
    each the geometric mean over blocks [95% interval], and its blocks with interference."""
    study = KINDS[kind]
    lines = [("configuration", f"rate {study.rate_unit}", "speedup", "roofline", "flagged")]
    for row in summary.to_dict("records"):
        n = int(row["blocks"])
        speedup = Interval.from_columns(row, "speedup", n=n).text(count="block")
        if row["speedup_verdict"] == "baseline":
            speedup = "baseline"
        elif pd.isna(row["speedup"]):  # its baseline was not measured
            speedup = "-"
        lines.append(
            (
                study.describe(row),
                Interval.from_columns(row, "rate", n=n).text("{:,.0f}", "", count="block"),
                speedup,
                _percent(Interval.from_columns(row, "roofline_fraction", n=n)),
                f"{int(row['flagged_blocks'])}/{n}",
            )
        )
    _columns(lines, echo)
    echo("geometric mean over blocks [95% interval]; speedup: paired within each block;")
    echo("roofline: share of the run's own compute probe; flagged: blocks that saw interference")


def _print_targets(checked: Sequence[Check], cpu: str, echo: Callable[[str], None]) -> None:
    echo(f"targets on {cpu}")
    lines = []
    for c in checked:
        if c.interval is None:
            value = "not measured"
        elif c.target.statistic == "roofline_fraction":
            value = _percent(c.interval)
        else:
            value = c.interval.text(count="block")
        lines.append((c.target.name, value, c.verdict))
    _columns(lines, echo, indent="  ")
    echo(f"{MET}: the 95% interval's low end reaches the target; {MISSED}: its high end is below")
    echo(f"it; {NOT_RESOLVED}: the interval holds the target, or there is none")


def _percent(interval: Interval) -> str:
    return interval.text("{:.1f}", "%", scale=100, count="block")


def _columns(lines: Sequence[Sequence[str]], echo: Callable[[str], None], indent: str = "") -> None:
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    for line in lines:
        echo(indent + "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())
