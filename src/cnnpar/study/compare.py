"""Result sets side by side: the same configurations measured on other machines or commits.

A *result set* is a results directory (or an archive of one made by `cnnpar pack`): its tidy
tables and the run records they came from, each record naming its machine, git revision, cnnpar
version and parameters, plus the config the workflow ran with (`tables/config.yaml`). Sets are
read through `cnnpar.study.tables.read_table`, the reader the workflow's own figures and report
use, so a damaged table is refused here the same way.

`compare` aligns configurations by what was asked (`StudyKind.keys`: model, engine or mode,
filters, grid, batch size, requested parallelism), never by what ran: each side's effective
parallelism is shown beside its rate. The two sides were measured at different moments, so
nothing pairs them: the ratio OTHER/BASE is the ratio of the geometric means over blocks and its
95% interval Welch's t on the log rates (`measure.intervals.unpaired_ratio_interval`).
"""

from __future__ import annotations

import contextlib
import math
import os
import tarfile
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from cnnpar.errors import CnnparError
from cnnpar.measure.intervals import (
    UNPAIRED_METHOD,
    Interval,
    log_interval,
    unpaired_ratio_interval,
)
from cnnpar.record import RECORD_NAME
from cnnpar.study.kinds import KINDS, plain_number, rank_count
from cnnpar.study.tables import TABLE_NAMES, read_table

CONFIG_NAME = "config.yaml"  # the workflow's config, beside the tables
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz")
# Besides the tables: what each job wrote that a later reader may want (small files only).
PACKED_JOB_FILES = (RECORD_NAME, "metrics.csv", "result.csv")
SEVERAL_MACHINES = "ran on several machines in this set"


class CompareError(CnnparError):
    """A result set that cannot be read, or sets that cannot be compared."""


# --- reading result sets --------------------------------------------------------------------


@dataclass
class ResultSet:
    """One result set, read: its name as given, its directory and its tables."""

    name: str
    root: Path
    jobs: pd.DataFrame
    summary: pd.DataFrame
    config_yaml: str | None = None
    configurations: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def machines(self) -> list[str]:
        return _distinct(self.jobs, "machine_name", "unknown machine")

    @property
    def revisions(self) -> list[str]:
        return _distinct(self.jobs, "git_revision", "unknown")

    @property
    def versions(self) -> list[str]:
        return _distinct(self.jobs, "cnnpar_version", "unknown")

    def describe(self) -> str:
        """'results-a: laptop (…, 2 CPUs, 8 GiB); git abc123; cnnpar 0.1.0'."""
        return (
            f"{self.name}: {' + '.join(self.machines)}; git {', '.join(self.revisions)}; "
            f"cnnpar {', '.join(self.versions)}"
        )


def _distinct(frame: pd.DataFrame, column: str, missing: str) -> list[str]:
    if column not in frame.columns:
        return [missing]
    values = [str(v) for v in frame[column].dropna().unique()]
    return sorted(values) or [missing]


@contextlib.contextmanager
def opened(
    paths: Sequence[str | os.PathLike[str]], names: Sequence[str] | None = None
) -> Iterator[list[ResultSet]]:
    """Read every result set (a directory, or an archive unpacked into a temporary directory
    that is removed on exit); `names` (default: the paths as given) name them in the output."""
    names = [str(p) for p in paths] if names is None else list(names)
    with tempfile.TemporaryDirectory(prefix="cnnpar-compare-") as scratch:
        sets = [
            read_set(path, Path(scratch) / str(i), name=name)
            for i, (path, name) in enumerate(zip(paths, names, strict=True))
        ]
        yield sets


def read_set(
    path: str | os.PathLike[str], scratch: Path | None = None, name: str | None = None
) -> ResultSet:
    """A result set from a results directory or a `cnnpar pack` archive (unpacked under
    `scratch`), named `name` (default: the path as given). Raises CompareError naming the path
    and the fix."""
    given = Path(path)
    if not given.exists():
        raise CompareError(f"{given} does not exist; give a results directory or a pack archive")
    root = given
    if given.is_file():
        if not str(given).endswith(ARCHIVE_SUFFIXES):
            raise CompareError(
                f"{given} is not a result set: give a results directory or a .tar.gz made by "
                "`cnnpar pack`"
            )
        if scratch is None:
            raise CompareError(f"{given}: an archive needs a directory to unpack into")
        root = _unpack(given, scratch)
    jobs_csv = root / "tables" / "jobs.csv"
    if not jobs_csv.is_file():
        raise CompareError(
            f"{given} is not a result set: it has no tables/jobs.csv (run the workflow there, "
            "or give the results directory it wrote)"
        )
    jobs = read_table(jobs_csv, "jobs")
    summary_csv = root / "tables" / "summary.csv"
    summary = read_table(summary_csv, "summary") if summary_csv.is_file() else pd.DataFrame()
    config = root / "tables" / CONFIG_NAME
    result = ResultSet(
        name=str(path) if name is None else name,
        root=root,
        jobs=jobs,
        summary=summary,
        config_yaml=config.read_text() if config.is_file() else None,
    )
    result.configurations = configurations(jobs, str(given))
    return result


def _unpack(archive: Path, scratch: Path) -> Path:
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(scratch, filter="data")  # no absolute paths, links out, devices
    except (tarfile.TarError, OSError, EOFError) as err:
        detail = " ".join(str(err).split())
        raise CompareError(f"{archive} is not a readable .tar.gz archive ({detail})") from None
    found = sorted(scratch.glob("**/tables/jobs.csv"), key=lambda p: len(p.parts))
    if not found:
        raise CompareError(f"{archive} holds no tables/jobs.csv: not a result set")
    return found[0].parent.parent


# --- configurations -------------------------------------------------------------------------


def _key(row: dict[str, Any]) -> tuple[str, ...]:
    kind = KINDS[row["study"]]
    row = {**row, "ranks": rank_count(row.get("ranks"))}  # sets from before ranks ran 1
    return (kind.name, *(plain_number(_scalar(row.get(k))) for k in kind.keys))


def _scalar(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return ""
    return value


def configurations(jobs: pd.DataFrame, where: str = "jobs table") -> pd.DataFrame:
    """One row per configuration of a jobs table: its key (what was asked), a description, the
    rates over blocks, the parallelism it ran with and on which machine(s)."""
    rows = []
    for column in ("study", "rate", "parallelism_requested", "batch_size"):
        if column not in jobs.columns:
            raise CompareError(f"{where}: tables/jobs.csv lacks {column!r}; re-run its tables")
    records = jobs.to_dict("records")
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for row in records:
        if row["study"] not in KINDS:
            raise CompareError(f"{where}: tables/jobs.csv has study {row['study']!r}")
        groups.setdefault(_key(row), []).append(row)
    for key, members in groups.items():
        first = members[0]
        kind = KINDS[first["study"]]
        machines = sorted({str(m.get("machine_name", "unknown machine")) for m in members})
        asked = first["parallelism_requested"]
        effective = sorted({int(m.get("parallelism", asked)) for m in members})
        rows.append(
            {
                "key": key,
                "study": kind.name,
                "configuration": f"{kind.name} {kind.describe(first)}",
                "rates": [float(m["rate"]) for m in members],
                "rate_unit": first.get("rate_unit") or kind.rate_unit,
                "ran": "/".join(map(str, effective)),
                "machines": machines,
                "flagged": sum(bool(m.get("flagged", False)) for m in members),
            }
        )
    frame = pd.DataFrame(rows)
    return frame.sort_values("configuration").reset_index(drop=True) if rows else frame


# --- comparing ------------------------------------------------------------------------------

COLUMNS = [
    "configuration", "base", "other", "rate_unit", "base_rate", "base_ran", "base_blocks",
    "other_rate", "other_ran", "other_blocks", "ratio", "ratio_low", "ratio_high", "verdict",
    "significant", "regression", "note",
]  # fmt: skip


@dataclass
class Comparison:
    """OTHER against BASE: one row per configuration present in both, and those present on
    one side only."""

    base: ResultSet
    other: ResultSet
    rows: pd.DataFrame
    only_base: list[str]
    only_other: list[str]

    @property
    def regressions(self) -> pd.DataFrame:
        return self.rows[self.rows["regression"]]


def compare_sets(base: ResultSet, other: ResultSet, fail_slower: float | None) -> Comparison:
    """Align `other`'s configurations with `base`'s and form each ratio OTHER/BASE.

    A configuration is a regression when OTHER is significantly slower (the whole interval
    below 1) and its estimate is more than `fail_slower` percent below BASE's rate.
    Raises CompareError when the sets have no configuration in common.
    """
    b = {row["key"]: row for row in base.configurations.to_dict("records")}
    o = {row["key"]: row for row in other.configurations.to_dict("records")}
    if not b or not o:
        raise CompareError(f"{base.name if not b else other.name} holds no timed jobs")
    common = [k for k in b if k in o]
    if not common:
        raise CompareError(
            f"{base.name} and {other.name} have no configuration in common (compare sets of "
            "the same study: same engines or modes, filters, grids, batch sizes, threads)"
        )
    limit = 1.0 - fail_slower / 100.0 if fail_slower is not None else None
    rows = []
    for key in common:
        x, y = b[key], o[key]
        row: dict[str, Any] = {
            "configuration": x["configuration"],
            "base": base.name,
            "other": other.name,
            "rate_unit": x["rate_unit"],
            "base_rate": log_interval(x["rates"]).estimate,
            "base_ran": x["ran"],
            "base_blocks": len(x["rates"]),
            "other_rate": log_interval(y["rates"]).estimate,
            "other_ran": y["ran"],
            "other_blocks": len(y["rates"]),
            "note": "",
        }
        several = [s.name for s, c in ((base, x), (other, y)) if len(c["machines"]) > 1]
        if several:
            ratio = Interval(math.nan, math.nan, math.nan, 0)
            row["note"] = f"not compared: {SEVERAL_MACHINES} ({', '.join(several)})"
            verdict = "not formed"
        else:
            ratio = unpaired_ratio_interval(y["rates"], x["rates"])
            verdict = ratio.direction("faster", "slower")
        row.update(ratio.columns("ratio"))
        row["verdict"] = verdict
        row["significant"] = verdict in ("faster", "slower")
        row["regression"] = bool(
            limit is not None and verdict == "slower" and ratio.estimate < limit
        )
        rows.append(row)
    return Comparison(
        base=base,
        other=other,
        rows=pd.DataFrame(rows, columns=COLUMNS),
        only_base=[b[k]["configuration"] for k in b if k not in o],
        only_other=[o[k]["configuration"] for k in o if k not in b],
    )


# --- text -----------------------------------------------------------------------------------


def _rate(value: float, ran: str, unit: str) -> str:
    return f"{value:,.0f} {unit} (ran {ran})"


def render(comparison: Comparison, fail_slower: float | None) -> list[str]:
    """The comparison as lines of text: who is who, the method, a table, one-sided lines."""
    c = comparison
    lines = [
        f"BASE  {c.base.describe()}",
        f"OTHER {c.other.describe()}",
        f"ratio OTHER/BASE: {UNPAIRED_METHOD}; * marks a ratio whose interval excludes 1; "
        "(ran N): the parallelism each side's jobs ran with",
    ]
    header = ["configuration", "BASE rate", "OTHER rate", "OTHER/BASE [95% CI]", "verdict"]
    table = [header]
    for _, r in c.rows.iterrows():
        ratio = Interval.from_columns(r, "ratio", n=min(r["base_blocks"], r["other_blocks"]))
        text = "" if r["verdict"] == "not formed" else ratio.text(count="block")
        verdict = r["verdict"] + (" *" if r["significant"] else "")
        if r["regression"]:
            verdict += f" (regression: more than {plain_number(fail_slower)}% slower)"
        if r["note"]:
            verdict += f" ({r['note']})"
        table.append(
            [
                r["configuration"],
                _rate(r["base_rate"], r["base_ran"], r["rate_unit"]),
                _rate(r["other_rate"], r["other_ran"], r["rate_unit"]),
                text,
                verdict,
            ]
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for i, row in enumerate(table):
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    for name, only in ((c.base.name, c.only_base), (c.other.name, c.only_other)):
        for configuration in only:
            lines.append(f"only in {name}: {configuration}")
    return lines


def verdict_line(comparisons: Sequence[Comparison], fail_slower: float | None) -> str:
    if fail_slower is None:
        return "no --fail-slower given: report only"
    bad = [r for c in comparisons for _, r in c.regressions.iterrows()]
    if not bad:
        return (
            f"OK: no configuration is significantly slower than BASE by more than "
            f"{plain_number(fail_slower)}%"
        )
    return (
        f"FAIL: {len(bad)} configuration(s) significantly slower than BASE by more than "
        f"{plain_number(fail_slower)}%: " + "; ".join(f"{r['configuration']} in {r['other']}"
                                                      for r in bad)
    )  # fmt: skip


def run(
    base: str | os.PathLike[str],
    others: Sequence[str | os.PathLike[str]],
    fail_slower: float | None = None,
    csv: str | os.PathLike[str] | None = None,
    echo: Any = print,
) -> int:
    """`cnnpar compare`: print each OTHER against BASE; write the rows to `csv` if given.
    Returns 1 when a configuration is a regression (see `compare_sets`), else 0."""
    from cnnpar.bench.common import check_csv_path
    from cnnpar.study.tables import write_frame

    target = check_csv_path(csv)
    with opened([base, *others]) as sets:
        comparisons = [compare_sets(sets[0], other, fail_slower) for other in sets[1:]]
    for i, comparison in enumerate(comparisons):
        if i:
            echo("")
        for line in render(comparison, fail_slower):
            echo(line)
    echo("")
    echo(verdict_line(comparisons, fail_slower))
    if target is not None:
        write_frame(target, pd.concat([c.rows for c in comparisons], ignore_index=True))
        echo(f"wrote {target}")
    return int(any(len(c.regressions) for c in comparisons))


# --- packing ----------------------------------------------------------------------------------


def pack(results: str | os.PathLike[str], out: str | os.PathLike[str]) -> tuple[Path, int]:
    """One archive of a result set: its tables (and config) and every job's run record and
    own table, under one top directory named like `results`. Returns (archive, files)."""
    from cnnpar.io import atomic_path

    root = Path(results)
    read_set(root)  # refuse a directory that is not a result set before writing anything
    files = [p for p in sorted((root / "tables").glob("*")) if p.is_file()]
    files += [p for name in PACKED_JOB_FILES for p in sorted(root.rglob(name)) if p.is_file()]
    top = root.resolve().name
    target = Path(out)
    with atomic_path(target) as tmp, tarfile.open(tmp, "w:gz") as tar:
        for path in dict.fromkeys(files):
            tar.add(path, arcname=f"{top}/{path.relative_to(root).as_posix()}")
    return target, len(dict.fromkeys(files))


# --- machines side by side (the report's Machines section) ----------------------------------

THIS_RUN = "this run"
MACHINE_COLUMNS = [
    "side", "set", "machine", "machine_name", "git_revision", "cnnpar_version", "key",
    "configuration", "workload", "study", "model", "engine", "mode", "filters", "grid", "cells",
    "batch_size", "parallelism_requested", "parallelism", "blocks", "rate_unit", "rate",
    "rate_low", "rate_high", "baseline", "speedup", "speedup_low", "speedup_high",
    "roofline_gflops", "roofline_device", "roofline_fraction", "roofline_fraction_low",
    "roofline_fraction_high", "fastest", "fastest_side", "vs_fastest", "vs_fastest_low",
    "vs_fastest_high", "vs_fastest_verdict", "side_best", "workload_fastest", "vs_workload",
    "vs_workload_low", "vs_workload_high", "vs_workload_verdict",
]  # fmt: skip


def _side_rates(jobs: pd.DataFrame, default_machine: str) -> dict[tuple[str, str], list[float]]:
    """Per-block rates of a jobs table by (machine, configuration key)."""
    rates: dict[tuple[str, str], list[float]] = {}
    if jobs.empty:
        return rates
    if "machine" in jobs.columns:
        machines = jobs["machine"].astype(str)
    else:
        machines = pd.Series(default_machine, index=jobs.index)
    keys = (" | ".join(_key(j)) for j in jobs.to_dict("records"))
    for machine, key, rate in zip(machines, keys, jobs["rate"], strict=True):
        rates.setdefault((machine, key), []).append(float(rate))
    return rates


def _per_machine(jobs: pd.DataFrame, column: str, default: str) -> dict[str, str]:
    """machine -> the distinct values of a jobs column there, joined ('abc123' or 'a, b')."""
    if jobs.empty or column not in jobs.columns or "machine" not in jobs.columns:
        return {}
    return {
        str(m): ", ".join(sorted({str(v) for v in part[column].dropna()})) or default
        for m, part in jobs.groupby("machine", sort=False)
    }


def machines_frame(
    summary: pd.DataFrame,
    jobs: pd.DataFrame,
    others: Sequence[ResultSet] = (),
    this: str = THIS_RUN,
) -> pd.DataFrame:
    """The `machines` table: every summary row of this run and of the `others` result sets,
    one *side* per (set, machine), each with its own rates, speedups and roofline fraction (a
    machine's roofline is its own jobs' probes, never another's: the summary row's own columns,
    formed inside that set's tables).

    Per configuration (`key`: what was asked, `_key`) present on several sides, `fastest` marks
    the side with the highest rate and `vs_fastest` gives every other side's rate over the
    fastest's with an unpaired 95% interval (`unpaired_ratio_interval`: Welch's t on the log
    rates over blocks; the sides were measured at different moments, so nothing pairs them);
    `vs_fastest_verdict` is faster, slower or not resolved. `workload` is the configuration
    without its engine or mode and parallelism (what was computed: 'train tinycnn F=8, B=32');
    per workload on several sides, `side_best` marks each side's fastest configuration,
    `workload_fastest` the fastest of those, and `vs_workload` (same interval, same verdicts)
    each other side's best over it.
    """
    parts = []
    for name, summ, jb in [(this, summary, jobs), *((s.name, s.summary, s.jobs) for s in others)]:
        if summ.empty:
            continue
        part = summ.copy()
        for column, default in (("machine", name), ("machine_name", "unknown machine")):
            if column not in part.columns:
                part[column] = default
        part["set"] = name
        part["side"] = part["machine_name"].astype(str) + f" in {name}"
        for column, default in (("git_revision", "unknown"), ("cnnpar_version", "unknown")):
            found = _per_machine(jb, column, default)
            part[column] = [found.get(str(m), default) for m in part["machine"]]
        records = part.to_dict("records")
        part["key"] = [" | ".join(_key(r)) for r in records]
        part["configuration"] = [f"{r['study']} {KINDS[r['study']].describe(r)}" for r in records]
        part["workload"] = [
            f"{r['study']} {r['model']} {KINDS[r['study']].family_text(r)}" for r in records
        ]
        rates = _side_rates(jb, name)
        part["rates"] = [
            rates.get((str(r["machine"]), key), [])
            for r, key in zip(records, part["key"], strict=True)
        ]
        parts.append(part)
    if not parts:
        return pd.DataFrame(columns=MACHINE_COLUMNS)
    frame = pd.concat(parts, ignore_index=True, sort=False)
    _versus(frame, "key", "fastest", "fastest_side", "vs_fastest")
    frame["side_best"] = False
    for _, group in frame.groupby(["workload", "side"], sort=False):
        frame.loc[group["rate"].idxmax(), "side_best"] = True
    _versus(frame[frame["side_best"]], "workload", "workload_fastest", None, "vs_workload", frame)
    frame["side_best"] = frame["side_best"] & frame["workload"].map(
        frame.groupby("workload")["side"].nunique() > 1
    )
    return frame.reindex(columns=MACHINE_COLUMNS)


def _versus(
    rows: pd.DataFrame,
    by: str,
    mark: str,
    mark_side: str | None,
    name: str,
    into: pd.DataFrame | None = None,
) -> None:
    """Per group of `rows` (column `by`) measured on two sides or more: set `mark` on the row
    with the highest rate (`mark_side`: its side, on every row of the group) and the columns
    `name`, `name`_low, `name`_high, `name`_verdict on the others: their rate over the best's,
    unpaired (`unpaired_ratio_interval` on the per-block rates). Writes into `into` (default
    `rows`), whose index `rows` shares."""
    into = rows if into is None else into
    into[mark] = False
    if mark_side is not None:
        into[mark_side] = ""
    into[f"{name}_verdict"] = ""
    for column in (name, f"{name}_low", f"{name}_high"):
        into[column] = math.nan
    for _, group in rows.groupby(by, sort=False):
        if group["side"].nunique() < 2:
            continue  # measured on one side only: nothing to put beside it
        best = group["rate"].idxmax()
        into.loc[best, mark] = True
        if mark_side is not None:
            into.loc[group.index, mark_side] = into.at[best, "side"]
        for index in group.index.drop(best):
            ratio = unpaired_ratio_interval(into.at[index, "rates"], into.at[best, "rates"])
            for column, value in ratio.columns(name).items():
                into.loc[index, column] = value
            into.loc[index, f"{name}_verdict"] = ratio.direction("faster", "slower")


__all__ = [
    "MACHINE_COLUMNS", "TABLE_NAMES", "THIS_RUN", "CompareError", "ResultSet", "compare_sets",
    "machines_frame", "opened", "pack", "read_set", "run",
]  # fmt: skip
