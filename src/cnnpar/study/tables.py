"""Tidy tables from the run records of the workflow's jobs, and the speedup/efficiency summary.

Each job wrote a typed run record (`run.json`, `cnnpar.record`) naming every parameter, the
parallelism that took effect and the environment; the tables take parameters from the records
only, never from where a file lives. Three tables come out:

- ``train.csv``: one row per training job × epoch (tinycnn and MosaicNet);
- ``classify.csv``: one row per classify job × timed repeat;
- ``summary.csv``: one row per configuration (seeds and repeats pooled) with the median and
  IQR of its throughput, its speedup and parallel efficiency over the family's 1-thread
  (training) or sequential (classification) baseline, and achieved GFLOP/s against the sgemm
  roofline measured at the same thread count.

Nothing here times or runs a model: it only reads files the jobs wrote.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cnnpar.errors import CnnparError
from cnnpar.io import atomic_path
from cnnpar.measure.timing import quartiles
from cnnpar.record import RunRecord

log = logging.getLogger(__name__)


class TableError(CnnparError):
    """A job's output cannot be read into the tables."""


SUMMARY_COLUMNS = [
    "study",  # train | classify
    "model",  # tinycnn | mosaicnet
    "engine",  # train engine (train rows)
    "mode",  # classify mode (classify rows)
    "filters",
    "grid",
    "cells",
    "batch_size",
    "parallelism_requested",  # threads (train) or workers (classify) the config asked for
    "parallelism",  # what the job ran with (snakemake caps threads at --cores)
    "samples",  # epochs × seeds, or repeats × seeds
    "rate_unit",  # images/s or cells/s
    "rate_median",
    "rate_q1",
    "rate_q3",
    "rate_iqr",
    "baseline",  # what the speedup is relative to
    "baseline_rate",
    "speedup",
    "speedup_q1",
    "speedup_q3",
    "efficiency",  # speedup / parallelism
    "accuracy",  # final-epoch test accuracy, or mosaic accuracy (median over seeds)
    "seconds_per_item",  # median seconds per image or per cell
    "gflops",  # achieved: FLOPs per item × median rate
    "roofline_gflops",  # measured sgemm at the job's thread count
    "roofline_fraction",
]


# --- reading run records --------------------------------------------------------------------


def read_table(path: str | os.PathLike[str]) -> pd.DataFrame:
    """A CSV as a frame; an empty file is an empty frame."""
    try:
        return pd.read_csv(path)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()


def read_records(paths: Iterable[str | os.PathLike[str]]) -> list[tuple[RunRecord, Path]]:
    """(record, the directory it describes) for every run.json."""
    return [(RunRecord.read(path), Path(path).parent) for path in paths]


def _output(record: RunRecord, job_dir: Path, name: str) -> Path:
    if name not in record.outputs:
        raise TableError(f"{job_dir / 'run.json'} lists no {name}; re-run that job")
    return job_dir / name


def env_record(info: Mapping[str, Any]) -> dict[str, Any]:
    """Columns from one `cnnpar info --json` record: env.* metadata plus the roofline."""
    flat = {
        f"env.{k}": v
        for k, v in info.items()
        if not k.startswith("sgemm") and (v is None or isinstance(v, str | int | float | bool))
    }
    flat["roofline_gflops"] = info.get("sgemm_gflops")
    return flat


def load_env_infos(paths: Iterable[str | os.PathLike[str]]) -> dict[int, dict[str, Any]]:
    """{sgemm thread count: env columns} from `cnnpar info --json` outputs."""
    infos = {}
    for path in paths:
        info = json.loads(Path(path).read_text())
        infos[int(info["sgemm_threads"])] = env_record(info)
    return infos


def _job_columns(record: RunRecord, job_dir: Path, unit: str) -> dict[str, Any]:
    """The record's columns with its parallelism named for the study (threads or workers)."""
    columns = record.columns()
    columns[f"{unit}_requested"] = columns.pop("parallelism_requested")
    columns[unit] = columns.pop("parallelism")
    columns["job_dir"] = str(job_dir)
    return columns


def _job_frames(
    records: Sequence[tuple[RunRecord, Path]],
    command: str,
    table: str,
    unit: str,
    env_infos: Mapping[int, Mapping[str, Any]] | None,
) -> list[pd.DataFrame]:
    """Each `command` job's `table` with the record's columns and the environment added; the
    table's own columns are what ran, so they win over the record's, but for the parallelism."""
    frames = []
    for record, job_dir in records:
        if record.command != command:
            continue
        frame = read_table(_output(record, job_dir, table)).reset_index(drop=True)
        frame.insert(0, "study", command)
        columns = _job_columns(record, job_dir, unit)
        env = dict((env_infos or {}).get(record.parallelism.requested, {}))
        for key, value in {**env, **columns}.items():
            if key not in frame.columns or key in (unit, f"{unit}_requested"):
                frame[key] = value
        frames.append(frame)
    return frames


def train_frame(
    records: Sequence[tuple[RunRecord, Path]],
    env_infos: Mapping[int, Mapping[str, Any]] | None = None,
) -> pd.DataFrame:
    """One row per training job × epoch: metrics.csv, the record's columns, the environment."""
    frames = []
    for frame in _job_frames(records, "train", "metrics.csv", "threads", env_infos):
        frame = frame.sort_values("epoch").reset_index(drop=True)
        frame["cum_seconds"] = frame["seconds"].cumsum()
        frames.append(frame)
    return _concat(frames)


def classify_frame(
    records: Sequence[tuple[RunRecord, Path]],
    env_infos: Mapping[int, Mapping[str, Any]] | None = None,
) -> pd.DataFrame:
    """One row per classify job × repeat: result.csv, the record's columns, the environment."""
    return _concat(_job_frames(records, "classify", "result.csv", "workers", env_infos))


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    if not frames:
        return pd.DataFrame()
    return pd.concat(frames, ignore_index=True, sort=False)


# --- the summary --------------------------------------------------------------------------


def summarize_train(train: pd.DataFrame) -> pd.DataFrame:
    """Per (model, engine, filters, batch, threads): images/s median/IQR, speedup over 1 thread."""
    if train.empty:
        return pd.DataFrame(columns=SUMMARY_COLUMNS)
    train = train.copy()
    if "filters" not in train.columns:
        train["filters"] = np.nan
    family = ["model", "engine", "filters", "batch_size"]
    config = [*family, "threads_requested", "threads"]
    rows = []
    for key, group in train.groupby(config, dropna=False, sort=True):
        values = dict(zip(config, key, strict=True))
        median, q1, q3 = quartiles(group["images_per_s"])
        final = group.sort_values("epoch").groupby("seed", dropna=False).tail(1)
        flops = _first(group, "flops_per_image")
        rows.append(
            {
                "study": "train",
                "model": values["model"],
                "engine": values["engine"],
                "filters": values["filters"],
                "batch_size": values["batch_size"],
                "parallelism_requested": values["threads_requested"],
                "parallelism": values["threads"],
                "samples": len(group),
                "rate_unit": "images/s",
                "rate_median": median,
                "rate_q1": q1,
                "rate_q3": q3,
                "rate_iqr": q3 - q1,
                "accuracy": float(final["test_acc"].median()),
                "seconds_per_item": float((1.0 / group["images_per_s"]).median()),
                "gflops": median * flops / 1e9,
                "roofline_gflops": _first(group, "roofline_gflops"),
            }
        )
    summary = pd.DataFrame(rows)
    return _add_speedup(
        summary,
        family=family,
        is_baseline=summary["parallelism"] == 1,
        baseline_name="1 thread",
    )


def summarize_classify(classify: pd.DataFrame) -> pd.DataFrame:
    """Per (mode, grid, batch, workers): cells/s median/IQR, speedup over sequential."""
    if classify.empty:
        return pd.DataFrame(columns=SUMMARY_COLUMNS)
    family = ["grid", "cells", "batch_size"]
    config = ["mode", *family, "workers_requested", "workers"]
    rows = []
    for key, group in classify.groupby(config, dropna=False, sort=True):
        values = dict(zip(config, key, strict=True))
        median, q1, q3 = quartiles(group["cells_per_s"])
        rows.append(
            {
                "study": "classify",
                "model": "mosaicnet",
                "mode": values["mode"],
                "grid": values["grid"],
                "cells": values["cells"],
                "batch_size": values["batch_size"],
                "parallelism_requested": values["workers_requested"],
                "parallelism": values["workers"],
                "samples": len(group),
                "rate_unit": "cells/s",
                "rate_median": median,
                "rate_q1": q1,
                "rate_q3": q3,
                "rate_iqr": q3 - q1,
                "accuracy": float(group["accuracy"].median()),
                "seconds_per_item": float((group["classify_s"] / group["cells"]).median()),
                "gflops": median * _first(group, "flops_per_image") / 1e9,
                "roofline_gflops": _first(group, "roofline_gflops"),
            }
        )
    summary = pd.DataFrame(rows).sort_values(["mode", "cells", "batch_size", "parallelism"])
    summary = summary.reset_index(drop=True)
    return _add_speedup(
        summary,
        family=family,
        is_baseline=(summary["mode"] == "sequential") & (summary["parallelism"] == 1),
        baseline_name="sequential",
    )


def _first(group: pd.DataFrame, column: str) -> float:
    if column not in group.columns or group[column].isna().all():
        return float("nan")
    return float(group[column].dropna().iloc[0])


def _add_speedup(
    summary: pd.DataFrame, family: list[str], is_baseline: pd.Series, baseline_name: str
) -> pd.DataFrame:
    """Speedup = rate / the family baseline's median rate; efficiency = speedup / parallelism."""
    baselines = (
        summary[is_baseline]
        .groupby(family, dropna=False)["rate_median"]
        .first()
        .rename("baseline_rate")
        .reset_index()
    )
    summary = summary.merge(baselines, on=family, how="left")
    summary["baseline"] = np.where(summary["baseline_rate"].notna(), baseline_name, "")
    summary["speedup"] = summary["rate_median"] / summary["baseline_rate"]
    summary["speedup_q1"] = summary["rate_q1"] / summary["baseline_rate"]
    summary["speedup_q3"] = summary["rate_q3"] / summary["baseline_rate"]
    summary["efficiency"] = summary["speedup"] / summary["parallelism"]
    summary["roofline_fraction"] = summary["gflops"] / summary["roofline_gflops"]
    return summary.reindex(columns=SUMMARY_COLUMNS)


def summarize(train: pd.DataFrame, classify: pd.DataFrame) -> pd.DataFrame:
    parts = [p for p in (summarize_train(train), summarize_classify(classify)) if not p.empty]
    if not parts:
        return pd.DataFrame(columns=SUMMARY_COLUMNS)
    return pd.concat(parts, ignore_index=True)


# --- writing ------------------------------------------------------------------------------


def write_frame(target: str | os.PathLike[str], frame: pd.DataFrame) -> None:
    """CSV through a temp file and a rename, like every other output."""
    with atomic_path(target) as tmp:
        frame.to_csv(tmp, index=False)


def build_tables(
    records: Sequence[str | os.PathLike[str]],
    env_infos: Sequence[str | os.PathLike[str]],
    train_out: str | os.PathLike[str],
    classify_out: str | os.PathLike[str],
    summary_out: str | os.PathLike[str],
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Read every job's run record and outputs and write the three tables; returns them too."""
    runs = read_records(records)
    envs = load_env_infos(env_infos)
    train = train_frame(runs, envs)
    classify = classify_frame(runs, envs)
    summary = summarize(train, classify)
    write_frame(train_out, train)
    write_frame(classify_out, classify)
    write_frame(summary_out, summary)
    log.info(
        "tables: %d train rows, %d classify rows, %d summary rows",
        len(train),
        len(classify),
        len(summary),
    )
    return train, classify, summary
