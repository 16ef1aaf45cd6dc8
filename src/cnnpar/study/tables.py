"""Tidy tables from the workflow's job directories, and the speedup/efficiency summary.

Every job directory names its sweep parameters in its path
(``train/tinycnn/engine~numba/threads~2/filters~8/batch~32/seed~0/``), so the tables recover
each parameter from where a file lives, and the job's ``run.json`` adds what actually ran
(effective thread counts, the environment record). Three tables come out:

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

from cnnpar.io import atomic_path

log = logging.getLogger(__name__)

# Path keys renamed so that the requested value never hides the effective one.
PATH_KEY_NAMES = {
    "threads": "threads_requested",
    "workers": "workers_requested",
    "batch": "batch_size",
}

# MosaicNet training FLOPs per image: forward plus backward (input and weight gradients) is
# counted as 3× the forward pass, the usual dense-layer estimate.
TRAIN_FLOPS_FACTOR = 3

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


# --- reading job directories --------------------------------------------------------------


def path_params(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Sweep parameters named in a result path: every ``key~value`` directory, plus the model.

    >>> path_params("results/train/tinycnn/engine~numba/threads~2/seed~0/metrics.csv")
    {'model': 'tinycnn', 'engine': 'numba', 'threads_requested': 2, 'seed': 0}
    """
    parts = Path(path).parts
    params: dict[str, Any] = {}
    if "train" in parts and parts.index("train") + 1 < len(parts):
        params["model"] = parts[parts.index("train") + 1]
    for part in parts:
        if "~" not in part:
            continue
        key, value = part.split("~", 1)
        params[PATH_KEY_NAMES.get(key, key)] = int(value) if value.isdigit() else value
    return params


def flatten(record: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists become JSON strings so every cell is a scalar."""
    flat: dict[str, Any] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        elif isinstance(value, list | tuple):
            flat[name] = json.dumps(value)
        else:
            flat[name] = value
    return flat


def read_json(path: str | os.PathLike[str]) -> dict[str, Any]:
    with open(path) as fh:
        return json.load(fh)


def run_record(job_dir: Path) -> dict[str, Any]:
    """The job's run.json flattened: its environment record under 'env.', the rest under
    'run.' ({} when the job wrote none)."""
    path = job_dir / "run.json"
    if not path.exists():
        return {}
    run = read_json(path)
    environment = run.pop("environment", None) or {}
    return {**flatten(environment, "env."), **flatten(run, "run.")}


def env_record(info: Mapping[str, Any]) -> dict[str, Any]:
    """Columns from one `cnnpar info --json` record: env.* metadata plus the roofline."""
    flat = flatten({k: v for k, v in info.items() if not k.startswith("sgemm")}, "env.")
    flat["roofline_gflops"] = info.get("sgemm_gflops")
    return flat


def load_env_infos(paths: Iterable[str | os.PathLike[str]]) -> dict[int, dict[str, Any]]:
    """{thread count: env columns} from results/env/threads~N/info.json files."""
    infos = {}
    for path in paths:
        threads = path_params(path)["threads_requested"]
        infos[int(threads)] = env_record(read_json(path))
    return infos


def _effective(run: Mapping[str, Any], keys: Sequence[str], default: Any) -> Any:
    """The first of `keys` present in a flattened run record, else `default`."""
    for key in keys:
        if run.get(key) is not None:
            return run[key]
    return default


def train_frame(
    metrics_paths: Iterable[str | os.PathLike[str]],
    env_infos: Mapping[int, Mapping[str, Any]] | None = None,
) -> pd.DataFrame:
    """One row per training job × epoch: path parameters, metrics, run.json, environment."""
    frames = []
    for path in metrics_paths:
        path = Path(path)
        metrics = pd.read_csv(path)
        params = path_params(path)
        run = run_record(path.parent)
        ran = _effective(run, ["run.threads", "run.args.threads"], None)
        requested = int(params.get("threads_requested", ran if ran is not None else 1))
        threads = int(ran if ran is not None else requested)
        frame = metrics.sort_values("epoch").reset_index(drop=True)
        frame.insert(0, "study", "train")
        for i, (key, value) in enumerate(params.items(), start=1):
            frame.insert(i, key, value)
        frame["threads_requested"] = requested
        frame["threads"] = threads
        # Parameters a path does not name (MosaicNet's engine and batch) come from run.json.
        for column in ("engine", "batch_size"):
            if column not in frame.columns:
                frame[column] = _effective(run, [f"run.{column}", f"run.args.{column}"], None)
        frame["cum_seconds"] = frame["seconds"].cumsum()
        frame["job_dir"] = str(path.parent)
        env = dict((env_infos or {}).get(requested, {}))
        for key, value in {**env, **run}.items():
            frame[key] = value
        frames.append(frame)
    return _concat(frames)


def classify_frame(
    result_paths: Iterable[str | os.PathLike[str]],
    env_infos: Mapping[int, Mapping[str, Any]] | None = None,
) -> pd.DataFrame:
    """One row per classify job × repeat: path parameters, result.csv columns, environment."""
    frames = []
    for path in result_paths:
        path = Path(path)
        result = pd.read_csv(path)
        params = path_params(path)
        frame = result.reset_index(drop=True)
        frame.insert(0, "study", "classify")
        if "repeat" not in frame.columns:
            frame.insert(1, "repeat", np.arange(1, len(frame) + 1))
        for key, value in params.items():
            if key not in frame.columns:  # result.csv's own mode/batch_size are what ran
                frame[key] = value
        if "workers" not in frame.columns:
            frame["workers"] = params["workers_requested"]
        if "grid" not in frame.columns:
            frame["grid"] = f"{frame['rows'].iloc[0]}x{frame['cols'].iloc[0]}"
        frame["job_dir"] = str(path.parent)
        env = dict((env_infos or {}).get(int(params.get("workers_requested", 1)), {}))
        run = run_record(path.parent)
        for key, value in {**env, **run}.items():
            frame[key] = value
        frames.append(frame)
    return _concat(frames)


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    if not frames:
        return pd.DataFrame()
    return pd.concat(frames, ignore_index=True, sort=False)


# --- the summary --------------------------------------------------------------------------


def _quartiles(values: pd.Series) -> tuple[float, float, float]:
    q1, median, q3 = np.percentile(values.to_numpy(dtype=float), [25, 50, 75])
    return float(median), float(q1), float(q3)


def _train_flops_per_image(model: str, filters: Any) -> float:
    if model == "tinycnn":
        from cnnpar.nets.tinycnn.spec import flops_per_image

        return float(flops_per_image(int(filters), training=True))
    from cnnpar.nets.mosaicnet import FLOPS_PER_IMAGE

    return float(TRAIN_FLOPS_FACTOR * FLOPS_PER_IMAGE)


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
        median, q1, q3 = _quartiles(group["images_per_s"])
        final = group.sort_values("epoch").groupby("seed", dropna=False).tail(1)
        flops = _train_flops_per_image(values["model"], values["filters"])
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
    from cnnpar.nets.mosaicnet import FLOPS_PER_IMAGE

    family = ["grid", "cells", "batch_size"]
    config = ["mode", *family, "workers_requested", "workers"]
    rows = []
    for key, group in classify.groupby(config, dropna=False, sort=True):
        values = dict(zip(config, key, strict=True))
        median, q1, q3 = _quartiles(group["cells_per_s"])
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
                "gflops": median * FLOPS_PER_IMAGE / 1e9,
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
    train_metrics: Sequence[str | os.PathLike[str]],
    classify_results: Sequence[str | os.PathLike[str]],
    env_infos: Sequence[str | os.PathLike[str]],
    train_out: str | os.PathLike[str],
    classify_out: str | os.PathLike[str],
    summary_out: str | os.PathLike[str],
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Read every job's files and write the three tables; returns them too."""
    envs = load_env_infos(env_infos)
    train = train_frame(train_metrics, envs)
    classify = classify_frame(classify_results, envs)
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
