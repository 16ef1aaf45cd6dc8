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
from cnnpar.study.kinds import KINDS, plain_number
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
def opened(paths: Sequence[str | os.PathLike[str]]) -> Iterator[list[ResultSet]]:
    """Read every result set (a directory, or an archive unpacked into a temporary directory
    that is removed on exit)."""
    with tempfile.TemporaryDirectory(prefix="cnnpar-compare-") as scratch:
        sets = [read_set(path, Path(scratch) / str(i)) for i, path in enumerate(paths)]
        yield sets


def read_set(path: str | os.PathLike[str], scratch: Path | None = None) -> ResultSet:
    """A result set from a results directory or a `cnnpar pack` archive (unpacked under
    `scratch`). Raises CompareError naming the path and the fix."""
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
        name=str(path),
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


__all__ = ["TABLE_NAMES", "CompareError", "ResultSet", "compare_sets", "pack", "read_set", "run"]
