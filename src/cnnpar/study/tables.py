"""Tidy tables from the run records of the workflow's jobs, with paired ratios over blocks.

Each job wrote a typed run record (`run.json`, `cnnpar.record`) naming every parameter, its
paired block, the parallelism that took effect, the guard around its timed region (probes,
other processes' CPU share) and the environment; the tables take everything from the records,
never from where a file lives. The tables that come out:

- one tidy table per study kind (`cnnpar.study.kinds`), named after it: ``train.csv``, one row
  per training job × epoch (throughput, full-length and MosaicNet runs); ``classify.csv``, one
  row per classify job × timed repeat;
- ``jobs.csv``: one row per timed job (configuration × block × seed): its rate (the kind's rate
  statistic over its tidy rows), its own roofs (`roof_columns`), and whether interference was
  detected (``flagged``);
- ``summary.csv``: one row per configuration: rate, speedup over its baseline, efficiency,
  fraction of its own compute roof and of its attainable rate, and for classification
  end-to-end rate and start-up payback, each ratio formed inside a block and summarised over
  blocks with a 95% interval (`cnnpar.measure.intervals`);
- ``comparisons.csv``: engine against engine and mode against mode, paired the same way;
- ``machines.csv``: the summary rows of this run and of the result sets named in the config's
  ``compare_with``, one side per set and machine (`cnnpar.study.compare.machines_frame`).

Nothing here times or runs a model: it only reads files the jobs wrote. `read_table` checks
every table it reads back (columns, numbers, rows) and fails with one line naming the file.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cnnpar.errors import CnnparError
from cnnpar.io import atomic_path
from cnnpar.measure.intervals import LEVEL, Interval, log_interval, paired_ratio_interval
from cnnpar.measure.stopping import Precision, precision_verdict
from cnnpar.record import RunRecord
from cnnpar.study.kinds import KINDS, StudyKind, missing, plain_number, rank_count

log = logging.getLogger(__name__)


class TableError(CnnparError):
    """A job's output or a table cannot be read into the study."""


# A pairing unit: the jobs of one block on one seed on one machine ran side by side. A ratio is
# formed only inside a unit, so it never divides the rates of two different machines.
PAIR = ["machine", "code_version", "block", "seed"]
NOT_FORMED = "not formed"  # the verdict of a ratio whose two sides never ran on one machine

SUMMARY_COLUMNS = [
    "study",  # train | classify
    "machine",  # the machine identity (cnnpar.measure.machine): one summary per machine
    "machine_name",  # the same for people
    "model",  # tinycnn | mosaicnet
    "engine",  # train engine (train rows)
    "mode",  # classify mode (classify rows)
    "filters",
    "grid",
    "cells",
    "batch_size",
    "parallelism_requested",  # threads (train) or workers (classify) the config asked for
    "parallelism",  # what the job ran with, from its run record
    "ranks",  # torch.distributed ranks sharing those cores (torch-ddp, mode ranks), else 1
    "comm_share",  # ranked jobs: all-reduce or gather seconds / (compute + those), median
    "cpus_available",  # the job's CPU affinity
    "blocks",  # pairing units (block × seed) summarised
    "rate_unit",  # images/s or cells/s
    "rate",  # geometric mean over blocks
    "rate_low",
    "rate_high",
    "baseline",  # what the speedup is relative to, e.g. "numba 1 thread"
    "baseline_rate",
    "speedup",  # per-block rate / baseline rate, summarised over blocks
    "speedup_low",
    "speedup_high",
    "speedup_verdict",  # higher | lower | not resolved (the interval contains 1) | not formed
    "speedup_not_formed",  # why no speedup was formed (its baseline ran on another machine)
    "efficiency",  # speedup / parallelism
    "efficiency_low",
    "efficiency_high",
    "end_to_end_rate",  # classify: cells / (start-up + one classification)
    "end_to_end_rate_low",
    "end_to_end_rate_high",
    "end_to_end_speedup",
    "end_to_end_speedup_low",
    "end_to_end_speedup_high",
    "startup_s",  # classify start-up (median over blocks)
    "payback_cells",  # cells from which the start-up over the baseline is paid back (median)
    "payback_cells_min",
    "payback_cells_max",
    "warmup_s",  # training: warm-up and compilation before the clock (median over blocks)
    "accuracy",  # final test accuracy of the full-length run, or mosaic accuracy
    "seconds_per_item",
    "gflops",  # counted FLOPs per item × rate
    "gflops_low",  # the rate's interval × FLOPs per item
    "gflops_high",
    "roofline_gflops",  # compute roof: the jobs' own matmul probes (geometric mean)
    "roofline_device",
    "roofline_fraction",  # gflops / compute roof, per block, summarised
    "roofline_fraction_low",
    "roofline_fraction_high",
    "bytes_per_item",  # compulsory bytes per image moved (the model's traffic model)
    "arithmetic_intensity",  # FLOPs per byte: flops per item / bytes per item
    "working_set_bytes",  # one step's (batch's) working set × the job's processes
    "bandwidth_cache_gbs",  # the jobs' triad probes in their threads' L2 (geometric mean)
    "bandwidth_memory_gbs",  # the same in main memory
    "bandwidth_applies",  # cache (the working set fits the probed L2) | memory
    "bandwidth_gbs",  # the bandwidth that applies
    "bandwidth_roof_gflops",  # arithmetic intensity × the bandwidth that applies
    "attainable_gflops",  # min(compute roof, bandwidth roof)
    "binding_roof",  # compute | bandwidth: the lower roof
    "attainable_fraction",  # gflops / attainable, per block, summarised
    "attainable_fraction_low",
    "attainable_fraction_high",
    "flagged_blocks",  # pairing units where this job or its baseline was flagged
    "flagged_jobs",  # those jobs, by label
    "code_version",  # the measured code's version(s) of its jobs (cnnpar.measure.code)
    "precision",  # headline speedups: met the stopping rule's target, or ran out of blocks
]

COMPARISON_COLUMNS = [
    "study", "machine", "machine_name", "family", "subject", "reference", "quantity", "ratio",
    "ratio_low", "ratio_high", "verdict", "not_formed", "blocks", "subject_rate",
    "reference_rate", "rate_unit", "flagged_blocks", "flagged_jobs", "precision",
]  # fmt: skip

# Columns every table must hold when read back, and which of them must be numbers; each kind's
# tidy table first.
TABLE_SCHEMAS: dict[str, tuple[list[str], list[str]]] = {
    **{kind.name: (list(kind.schema[0]), list(kind.schema[1])) for kind in KINDS.values()},
    "jobs": (
        ["study", "label", "block", "rate", "flagged"],
        ["rate"],
    ),
    "summary": (
        ["study", "model", "parallelism_requested", "parallelism", "rate", "speedup",
         "speedup_low", "speedup_high"],
        ["parallelism_requested", "parallelism", "rate"],
    ),
    "comparisons": (
        ["study", "subject", "reference", "ratio", "ratio_low", "ratio_high", "verdict"],
        [],
    ),
    "machines": (  # this run's summary beside other result sets' (config key compare_with)
        ["side", "set", "machine_name", "configuration", "study", "rate", "fastest"],
        ["rate"],
    ),
}  # fmt: skip
TABLE_NAMES = list(TABLE_SCHEMAS)
# Tables that may hold a header and no rows: a study of one engine and one mode compares nothing.
MAY_HAVE_NO_ROWS = frozenset({"comparisons"})


# --- reading run records --------------------------------------------------------------------


def read_table(
    path: str | os.PathLike[str], name: str | None = None, allow_empty: bool = False
) -> pd.DataFrame:
    """A table as a frame, checked against `TABLE_SCHEMAS[name]` (name: the file's stem):
    every required column present, numeric columns numbers, and rows unless `allow_empty` or
    the table is one of MAY_HAVE_NO_ROWS. A damaged file gives a TableError naming the file and
    the problem."""
    path = Path(path)
    name = name or path.stem
    fix = "re-run the tables step (snakemake --forcerun tables)"
    _check_csv_shape(path, fix)
    try:
        frame = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        frame = pd.DataFrame()
    except pd.errors.ParserError as err:
        detail = " ".join(str(err).split())
        raise TableError(f"{path} is damaged ({detail}); {fix}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise TableError(f"cannot read {path} ({err}); {fix}") from None
    if frame.empty and allow_empty:
        return frame
    required, numeric = TABLE_SCHEMAS.get(name, ([], []))
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise TableError(f"{path} lacks column(s) {', '.join(missing)}; {fix}")
    if frame.empty and name not in MAY_HAVE_NO_ROWS:
        raise TableError(f"{path} has no rows; {fix}")
    for column in numeric:
        values = pd.to_numeric(frame[column], errors="coerce")
        bad = values.isna() & frame[column].notna()
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise TableError(
                f"{path}: column {column!r} holds {frame[column].iloc[row]!r} in row {row + 2}, "
                f"not a number; {fix}"
            )
        frame[column] = values
    if frame[required].isna().all(axis=1).any():
        raise TableError(f"{path} has an empty row (truncated?); {fix}")
    return frame


def _check_csv_shape(path: Path, fix: str) -> None:
    """Every row as wide as the header, no open quote: pandas would pad a truncated last row
    with NaN and carry on."""
    try:
        with path.open(newline="") as fh:
            rows = csv.reader(fh, strict=True)
            header = next(rows, None)
            for number, row in enumerate(rows, start=2):
                if header is not None and len(row) != len(header):
                    raise TableError(
                        f"{path} is damaged: line {number} has {len(row)} fields, the header "
                        f"{len(header)} (truncated?); {fix}"
                    )
    except csv.Error as err:
        raise TableError(f"{path} is damaged ({err}); {fix}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise TableError(f"cannot read {path} ({err}); {fix}") from None


def read_records(paths: Iterable[str | os.PathLike[str]]) -> list[tuple[RunRecord, Path]]:
    """(record, the directory it describes) for every run.json."""
    return [(RunRecord.read(path), Path(path).parent) for path in paths]


def _output(record: RunRecord, job_dir: Path, name: str) -> Path:
    if name not in record.outputs:
        raise TableError(f"{job_dir / 'run.json'} lists no {name}; re-run that job")
    return job_dir / name


def _job_columns(record: RunRecord, job_dir: Path) -> dict[str, Any]:
    """The record's columns: parameters as asked, `parallelism_requested` and `parallelism`
    (what ran), results, environment."""
    columns = record.columns()
    columns.setdefault("block", None)
    columns["job_dir"] = str(job_dir)
    return columns


def tidy_frame(records: Sequence[tuple[RunRecord, Path]], kind: StudyKind) -> pd.DataFrame:
    """The tidy table of one kind: each of its jobs' own table (`kind.output`) with the
    record's columns added, as `kind.tidy` shapes it. The table's own columns are what ran, so
    they win over the record's, but for the parallelism, which only the record states both
    ways."""
    frames = []
    for record, job_dir in records:
        if record.command != kind.name:
            continue
        frame = _read_output(_output(record, job_dir, kind.output)).reset_index(drop=True)
        frame.insert(0, "study", kind.name)
        for key, value in _job_columns(record, job_dir).items():
            if key not in frame.columns or key in ("parallelism_requested", "parallelism"):
                frame[key] = value
        frames.append(kind.tidy(frame))
    return _concat(frames)


def _read_output(path: Path) -> pd.DataFrame:
    try:
        frame = pd.read_csv(path)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        detail = " ".join(str(err).split())
        raise TableError(f"cannot read {path} ({detail}); re-run its job") from None
    if frame.empty:
        raise TableError(f"{path} has no rows; re-run its job")
    return frame


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    if not frames:
        return pd.DataFrame()
    return pd.concat(frames, ignore_index=True, sort=False)


# --- one row per timed job ----------------------------------------------------------------

GUARD_COLUMNS = [
    "roofline_gflops", "roofline_device", "bandwidth_cache_gbs", "bandwidth_memory_gbs",
    "bandwidth_cache_bytes", "others_cpu_share", "steal_share", "probe_change", "lock_wait_s",
    "flagged", "flag_reasons",
]  # fmt: skip
# Numeric inputs of the roofs that a record may lack (written before they were recorded): NaN.
ROOF_INPUTS = (
    "roofline_gflops", "bandwidth_cache_gbs", "bandwidth_memory_gbs", "bandwidth_cache_bytes",
    "bytes_per_item", "working_set_bytes",
)  # fmt: skip


def _label(row: Mapping[str, Any]) -> str:
    kind = KINDS[row["study"]]
    seed, block = plain_number(row["seed"]), plain_number(row["block"])
    return f"{kind.name} {kind.describe(row)} seed {seed} block {block}"


def jobs_frame(*tidy: pd.DataFrame) -> pd.DataFrame:
    """One row per paired timed job (one in a block) of the kinds' tidy tables, each job's
    rate its kind's rate statistic over its rows."""
    rows = []
    for kind in KINDS.values():
        for frame in tidy:
            own = kind.rows(frame)
            if own.empty:
                continue
            for _, group in own[own["block"].notna()].groupby("job_dir", sort=False):
                rows.append({**_common(group.iloc[0], kind.name), **kind.job_columns(group)})
    if not rows:
        return pd.DataFrame()
    jobs = pd.DataFrame(rows)
    jobs["label"] = [_label(row) for row in jobs.to_dict("records")]
    jobs["gflops"] = jobs["rate"] * jobs["flops_per_item"] / 1e9
    jobs["roofline_fraction"] = jobs["gflops"] / jobs["roofline_gflops"]
    jobs = pd.concat([jobs, roof_columns(jobs)], axis=1)
    jobs["attainable_fraction"] = jobs["gflops"] / jobs["attainable_gflops"]
    return jobs


def roof_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """The roofline of each row (Williams, Waterman and Patterson, "Roofline", CACM 2009):

    - `arithmetic_intensity` = flops_per_item / bytes_per_item (FLOP/byte);
    - `bandwidth_applies`: "cache" when the job's working set (`working_set_bytes`: one step
      of each of its processes) fits the L2 the cache probe ran in (`bandwidth_cache_bytes`,
      the L2 share of the job's threads together), so after its first touch the step streams
      from L2; else "memory", and also where no cache probe ran (GPU). Two levels only: a
      working set that fits L3 but not L2 gets the memory roof, the lower one;
    - `bandwidth_gbs`, and `bandwidth_roof_gflops` = intensity × bandwidth (GB/s × FLOP/B);
    - `attainable_gflops` = min(roofline_gflops, bandwidth_roof_gflops) and `binding_roof`,
      the lower one ("compute" on a tie); NaN and "" where either roof is missing (records
      written before the bandwidth probes or the byte counts).
    """
    num = {c: _numbers(frame, c) for c in ("flops_per_item", *ROOF_INPUTS)}
    out = pd.DataFrame(index=frame.index)
    out["arithmetic_intensity"] = num["flops_per_item"] / num["bytes_per_item"]
    fits = num["working_set_bytes"] <= num["bandwidth_cache_bytes"]
    fits &= num["bandwidth_cache_gbs"].notna()
    out["bandwidth_applies"] = np.where(fits, "cache", "memory")
    out["bandwidth_gbs"] = np.where(fits, num["bandwidth_cache_gbs"], num["bandwidth_memory_gbs"])
    out.loc[out["bandwidth_gbs"].isna(), "bandwidth_applies"] = ""
    out["bandwidth_roof_gflops"] = out["arithmetic_intensity"] * out["bandwidth_gbs"]
    compute, bandwidth = num["roofline_gflops"], out["bandwidth_roof_gflops"]
    known = compute.notna() & bandwidth.notna()
    out["attainable_gflops"] = np.where(known, np.fmin(compute, bandwidth), np.nan)
    lower = np.where(compute <= bandwidth, "compute", "bandwidth")
    out["binding_roof"] = np.where(known, lower, "")
    return out


def _numbers(frame: pd.DataFrame, column: str) -> pd.Series:
    """`column` as floats, NaN where a value or the whole column is missing."""
    if column not in frame.columns:
        return pd.Series(np.nan, index=frame.index, dtype=float)
    return pd.to_numeric(frame[column], errors="coerce").astype(float)


def _common(first: pd.Series, study: str) -> dict[str, Any]:
    out = {
        "study": study,
        "model": first["model"],
        "batch_size": int(first["batch_size"]),
        "seed": int(first["seed"]),
        "block": int(first["block"]),
        "parallelism_requested": int(first["parallelism_requested"]),
        "parallelism": int(first["parallelism"]),
        "ranks": rank_count(first.get("ranks")),
        "comm_share": first.get("comm_share"),
        "machine": first["machine"],
        "machine_name": first["machine_name"],
        "git_revision": first.get("env.git_revision"),
        "code_version": first.get("code_version") or "unknown",
        "cnnpar_version": first.get("env.cnnpar"),
        "cpus_available": first.get("env.cpus_available"),
        "flops_per_item": float(first["flops_per_image"]),
        # the compulsory bytes, and the job's working set: absent from older records (NaN)
        "bytes_per_item": first.get("bytes_per_image"),
        "working_set_bytes": _working_set(first),
        "finished_utc": first.get("env.utc_time"),
        "job_dir": first["job_dir"],
    }
    for column in GUARD_COLUMNS:
        out[column] = first.get(column)
    out["flagged"] = bool(out["flagged"]) if pd.notna(out["flagged"]) else False
    if pd.isna(out["flag_reasons"]):
        out["flag_reasons"] = ""
    return out


def _working_set(first: pd.Series) -> float | None:
    """A job's working set: one step's (`working_set_bytes` of its record) in each of its
    processes, which step side by side (classify processes, ranks); None when not recorded."""
    step = first.get("working_set_bytes")
    if missing(step):
        return None
    processes = first.get("processes")
    return float(step) * (1 if missing(processes) else int(processes))


# --- the summary: ratios inside a block, summarised over blocks ------------------------------


def _units(group: pd.DataFrame) -> pd.DataFrame:
    if "code_version" not in group.columns:  # job rows made before code versions were kept
        group = group.assign(code_version="unknown")
    return group.set_index(PAIR).sort_index()


def _paired(
    a: pd.DataFrame, b: pd.DataFrame, column: str, level: float = LEVEL
) -> tuple[Interval, pd.Index]:
    """The paired ratio a/b of `column` over the pairing units both have."""
    common = a.index.intersection(b.index)
    return paired_ratio_interval(a.loc[common, column], b.loc[common, column], level), common


def _why_unpaired(a: pd.DataFrame, b: pd.DataFrame) -> str:
    """Why two sides share no pairing unit: another code version, or no common block."""
    versions = set(a.index.get_level_values("code_version"))
    other = set(b.index.get_level_values("code_version"))
    if versions and other and not versions & other:
        return (
            f"the two sides measured different code versions ({', '.join(sorted(versions))} "
            f"against {', '.join(sorted(other))}): re-run both with one version"
        )
    return "no block and seed where both ran on this machine"


def _flags(units: Iterable[pd.DataFrame], common: pd.Index) -> tuple[int, str]:
    flagged_units, labels = set(), []
    for frame in units:
        hit = frame.loc[common]
        hit = hit[hit["flagged"]]
        flagged_units |= set(hit.index)
        labels += list(hit["label"])
    return len(flagged_units), "; ".join(sorted(set(labels)))


def summarize(jobs: pd.DataFrame, *tidy: pd.DataFrame, level: float = LEVEL) -> pd.DataFrame:
    """One row per configuration (seeds and blocks pooled as pairing units); the kinds' tidy
    tables give what the jobs table lacks (the accuracy of full-length training runs). Rows
    come by kind (in the order of their names), then machine and `kind.order`."""
    if jobs.empty:
        return pd.DataFrame(columns=SUMMARY_COLUMNS)
    parts = []
    for kind in sorted(KINDS.values(), key=lambda k: k.name):
        part = kind.rows(jobs)
        if part.empty:
            continue
        own = _concat([kind.rows(frame) for frame in tidy if not kind.rows(frame).empty])
        config = list(kind.config)
        rows = []
        for _, family in part.groupby(list(kind.family), dropna=False, sort=True):
            is_base = [kind.is_baseline(r) for r in family.to_dict("records")]
            for _, fam in family.groupby("machine", sort=True):
                base = fam[[kind.is_baseline(r) for r in fam.to_dict("records")]]
                base_units = (
                    _units(base) if not base.empty and base[config].nunique().max() == 1 else None
                )
                for _, group in fam.groupby(config, dropna=False, sort=True):
                    row = _summary_row(kind, group, base_units, own, level)
                    if base.empty and any(is_base):
                        elsewhere = family[is_base]["machine_name"].unique()
                        row["speedup_verdict"] = NOT_FORMED
                        row["baseline"] = kind.baseline_name(group.iloc[0])
                        row["speedup_not_formed"] = (
                            f"its baseline ({row['baseline']}) ran only on "
                            f"{' and '.join(sorted(elsewhere))}, another machine"
                        )
                    rows.append(row)
        frame = pd.DataFrame(rows).reindex(columns=SUMMARY_COLUMNS)
        parts.append(frame.sort_values(["machine", *kind.order], na_position="first"))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=SUMMARY_COLUMNS)


def _summary_row(
    kind: StudyKind,
    group: pd.DataFrame,
    base: pd.DataFrame | None,
    own: pd.DataFrame,
    level: float = LEVEL,
) -> dict[str, Any]:
    first = group.iloc[0]
    units = _units(group)
    out: dict[str, Any] = {
        key: first.get(key)
        for key in (
            "study", "machine", "machine_name", "model", "engine", "mode", "filters", "grid",
            "cells", "batch_size", "parallelism_requested", "ranks", "rate_unit",
            "roofline_device",
        )
    }  # fmt: skip
    if units["comm_share"].notna().any():
        out["comm_share"] = float(units["comm_share"].median())
    out["parallelism"] = int(group["parallelism"].median())
    out["cpus_available"] = group["cpus_available"].min()
    out["blocks"] = len(units)
    out["code_version"] = " ".join(sorted(set(units.index.get_level_values("code_version"))))
    out.update(log_interval(units["rate"], level).columns("rate"))
    out["seconds_per_item"] = 1.0 / out["rate"]
    for column in ("gflops", "gflops_low", "gflops_high"):
        out[column] = out[column.replace("gflops", "rate")] * first["flops_per_item"] / 1e9
    out["roofline_gflops"] = log_interval(units["roofline_gflops"]).estimate
    out.update(log_interval(units["roofline_fraction"], level).columns("roofline_fraction"))
    out.update(_summary_roofs(group, units, first, level))
    out["accuracy"] = float(units["accuracy"].median())
    flagged, labels = _flags([units], units.index)
    common = None
    if base is not None:
        out["baseline"] = kind.baseline_name(first)
        out["baseline_rate"] = log_interval(base["rate"]).estimate
        speedup, common = _paired(units, base, "rate", level)
        out.update(speedup.columns("speedup"))
        out["speedup_verdict"] = "baseline" if kind.is_baseline(first) else speedup.direction()
        if not len(common):
            out["speedup_verdict"] = NOT_FORMED
            out["speedup_not_formed"] = _why_unpaired(units, base)
        out.update(speedup.scaled(1.0 / out["parallelism"]).columns("efficiency"))
        flagged, labels = _flags([units, base], common)
    out.update(kind.summary_columns(units, base, common, own, first))
    out["flagged_blocks"] = flagged
    out["flagged_jobs"] = labels
    return out


def _summary_roofs(
    group: pd.DataFrame, units: pd.DataFrame, first: pd.Series, level: float
) -> dict[str, Any]:
    """The roofs of a configuration: its jobs' probes as geometric means, the roofs formed
    from them by `roof_columns`, and the fraction of the attainable rate per block."""
    row = {key: first.get(key) for key in ("flops_per_item", "bytes_per_item", "working_set_bytes")}
    row["bandwidth_cache_bytes"] = _numbers(group, "bandwidth_cache_bytes").min()
    for column in ("roofline_gflops", "bandwidth_cache_gbs", "bandwidth_memory_gbs"):
        row[column] = log_interval(_numbers(units, column)).estimate
    shown = ("bytes_per_item", "working_set_bytes", "bandwidth_cache_gbs", "bandwidth_memory_gbs")
    out = {key: row[key] for key in shown}
    out.update(roof_columns(pd.DataFrame([row])).iloc[0].to_dict())
    attained = _numbers(units, "attainable_fraction")  # NaN for rows made without roofs
    out.update(log_interval(attained, level).columns("attainable_fraction"))
    return out


# --- engine against engine, mode against mode ----------------------------------------------


def compare(jobs: pd.DataFrame, level: float = LEVEL) -> pd.DataFrame:
    """Each engine (mode) at its largest parallelism against every other, paired by block on one
    machine. Two that never ran on one machine get a row saying the ratio was not formed."""
    rows = []
    for kind in KINDS.values():
        part = kind.rows(jobs)
        if part.empty:
            continue
        for _, family in part.groupby(list(kind.peers), dropna=False, sort=True):
            where = kind.family_text(family.iloc[0])
            for _, fam in family.groupby("machine", sort=True):
                rows += _compare_family(kind, fam, where, level)
            rows += _not_formed(kind, family, where)
    return pd.DataFrame(rows, columns=COMPARISON_COLUMNS)


def _compare_family(
    kind: StudyKind, fam: pd.DataFrame, where: str, level: float = LEVEL
) -> list[dict[str, Any]]:
    """Every pair of subjects of one family on one machine."""
    rows = []
    tops = {
        name: _units(g[g["parallelism_requested"] == g["parallelism_requested"].max()])
        for name, g in fam.groupby(list(kind.layout), sort=True)
    }
    names = sorted(tops, key=lambda n: -log_interval(tops[n]["rate"]).estimate)
    for i, subject in enumerate(names):
        for reference in names[i + 1 :]:
            a, b = tops[subject], tops[reference]
            ratio, common = _paired(a, b, "rate", level)
            flagged, labels = _flags([a, b], common)
            rows.append(
                {
                    "study": kind.name,
                    "machine": fam["machine"].iloc[0],
                    "machine_name": fam["machine_name"].iloc[0],
                    "family": where,
                    "subject": _top_text(kind, subject, a),
                    "reference": _top_text(kind, reference, b),
                    "quantity": "rate",
                    **ratio.columns("ratio"),
                    "verdict": ratio.direction() if len(common) else NOT_FORMED,
                    "not_formed": "" if len(common) else _why_unpaired(a, b),
                    "blocks": ratio.n,
                    "subject_rate": log_interval(a.loc[common, "rate"]).estimate,
                    "reference_rate": log_interval(b.loc[common, "rate"]).estimate,
                    "rate_unit": a["rate_unit"].iloc[0],
                    "flagged_blocks": flagged,
                    "flagged_jobs": labels,
                }
            )
    return rows


def _not_formed(kind: StudyKind, family: pd.DataFrame, where: str) -> list[dict[str, Any]]:
    """Subjects of one family that never ran on a common machine: listed, never divided."""
    machines = {
        kind.layout_text(name, top["parallelism_requested"].max(), ranks): dict(
            zip(top["machine"], top["machine_name"], strict=True)
        )
        for (name, ranks), g in family.groupby(list(kind.layout), sort=True)
        for top in [g[g["parallelism_requested"] == g["parallelism_requested"].max()]]
    }
    rows = []
    names = sorted(machines)
    for i, subject in enumerate(names):
        for reference in names[i + 1 :]:
            if set(machines[subject]) & set(machines[reference]):
                continue
            on = {n: " and ".join(sorted(set(machines[n].values()))) for n in (subject, reference)}
            rows.append(
                {
                    "study": kind.name,
                    "family": where,
                    "subject": subject,
                    "reference": reference,
                    "quantity": "rate",
                    "verdict": NOT_FORMED,
                    "not_formed": f"{subject} ran only on {on[subject]}, {reference} only on "
                    f"{on[reference]}: different machines",
                    "blocks": 0,
                    "rate_unit": kind.rate_unit,
                }
            )
    return rows


def _top_text(kind: StudyKind, layout: tuple[str, int], units: pd.DataFrame) -> str:
    name, ranks = layout
    return kind.layout_text(name, units["parallelism_requested"].iloc[0], ranks)


# --- writing ------------------------------------------------------------------------------


def write_frame(target: str | os.PathLike[str], frame: pd.DataFrame) -> None:
    """CSV through a temp file and a rename, like every other output."""
    with atomic_path(target) as tmp:
        frame.to_csv(tmp, index=False)


def build_frames(
    records: Sequence[str | os.PathLike[str]], level: float = LEVEL
) -> dict[str, pd.DataFrame]:
    """Every table of this run's records (each kind's tidy table, jobs, summary, comparisons),
    with intervals at confidence `level`, written nowhere."""
    runs = read_records(records)
    tidy = {kind.name: tidy_frame(runs, kind) for kind in KINDS.values()}
    jobs = jobs_frame(*tidy.values())
    return {
        **tidy,
        "jobs": jobs,
        "summary": summarize(jobs, *tidy.values(), level=level),
        "comparisons": compare(jobs, level)
        if not jobs.empty
        else pd.DataFrame(columns=COMPARISON_COLUMNS),
    }


def _precision_columns(tables: dict[str, pd.DataFrame], precision: Precision | None) -> None:
    """Each headline (a speedup formed against another configuration, a comparison) gets
    `precision`: whether its interval met the stopping rule's target or the study ran out of
    blocks (or had a fixed number)."""
    for name, column in (("summary", "speedup"), ("comparisons", "ratio")):
        frame = tables[name]
        frame["precision"] = [
            precision_verdict(precision, Interval.from_columns(row, column))
            if precision is not None
            and pd.notna(row.get(f"{column}_low"))
            and row.get(f"{column}_low") != row.get(f"{column}_high")
            else ""
            for row in frame.to_dict("records")
        ]


def build_tables(
    records: Sequence[str | os.PathLike[str]],
    out: Mapping[str, str | os.PathLike[str]],
    config: tuple[str | os.PathLike[str], str] | None = None,
    compare_with: Sequence[str | os.PathLike[str]] = (),
    compare_names: Sequence[str] | None = None,
    precision: Precision | None = None,
) -> dict[str, pd.DataFrame]:
    """Read every job's run record and outputs and write the tables named in `out`
    (each kind's tidy table, jobs, summary, comparisons, machines); returns them too.
    `config` = (path, text) also writes the config the study ran with beside them, so the
    tables and records make a self-contained result set (`cnnpar compare`, `cnnpar pack`).
    `compare_with` lists other result sets (directories or `cnnpar pack` archives) whose
    summaries the machines table puts beside this run's, named `compare_names` (default: the
    paths); one that cannot be read raises `cnnpar.study.compare.CompareError`. With the
    study's stopping rule `precision`, intervals are at its per-look level (valid although the
    data decided when to stop) and each headline says whether it met the target."""
    from cnnpar.study import compare as sets

    tables = build_frames(records, precision.look_level if precision else LEVEL)
    _precision_columns(tables, precision)
    jobs = tables["jobs"]
    with sets.opened(compare_with, compare_names) as others:
        tables["machines"] = sets.machines_frame(tables["summary"], jobs, others)
    for name, target in out.items():
        write_frame(target, tables[name])
    if config is not None:
        from cnnpar.io import write_text

        write_text(config[0], config[1])
    flagged = int(jobs["flagged"].sum()) if not jobs.empty else 0
    log.info(
        "tables: %s; %d of %d timed jobs flagged",
        ", ".join(f"{len(frame)} {name} rows" for name, frame in tables.items()),
        flagged,
        len(jobs),
    )
    return tables
