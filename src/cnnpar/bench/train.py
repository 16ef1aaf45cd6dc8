"""`cnnpar bench train`: TinyCNN training throughput at F=8, B=32, as a small built-in study.

Every block trains each engine for `time_budget` seconds per thread count, engine by engine in
the plan's order (reversed in even blocks). numba and torch train all their thread counts in
one process, taking turns in short windows (`train.run_interleaved`), so their speedup pairs
windows a fraction of a second apart; every run writes an ordinary `cnnpar train` record with
its block number, and the study's tables summarise them (`cnnpar.bench.common`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd

from cnnpar import train
from cnnpar.bench import common
from cnnpar.measure.interference import DEFAULT_LOCK
from cnnpar.measure.machine import this_machine
from cnnpar.registry import ENGINES
from cnnpar.study import plan

# One-process engines: the bench compares engines at thread counts, not rank layouts.
ENGINE_CHOICES = tuple(name for name, e in ENGINES.items() if not e.ranks)
DEFAULT_ENGINES = tuple(name for name in ENGINE_CHOICES if ENGINES[name].device == "cpu")
FILTERS, BATCH_SIZE = 8, 32  # where the targets are set


def train_bench(
    engines: Sequence[str] | None = None,
    threads: Sequence[int] = (1, 2),
    blocks: int = 5,
    time_budget: float = 1.0,
    *,
    out: str | os.PathLike[str] | None = None,
    csv_path: str | os.PathLike[str] | None = None,
    train_size: int = 8192,
    test_size: int = 1000,
    timing_lock: str | None = str(DEFAULT_LOCK),
    echo: Callable[[str], None] = common.say,
) -> tuple[pd.DataFrame, list[common.Check]]:
    """Train every engine at every thread count (`threads`; one for the serial and GPU engines)
    for `time_budget` seconds per run and block, in `blocks` blocks, on the first `train_size`
    training digits (evaluated on `test_size` test digits after each epoch, off the clock).
    Writes the run directories into `out` (kept; new or empty) or a temporary directory, the
    summary rows to `csv_path`, and prints them and the targets. Returns the summary rows and
    the targets' checks. `engines` None: every CPU engine that can run here (DEFAULT_ENGINES,
    less those `cnnpar engines` says cannot, named in one line). Raises BenchError (one line,
    before any work) for a bad argument or an engine named that cannot run here, and the run's
    own CnnparError when a run fails."""
    from cnnpar.nets import tinycnn

    available = tinycnn.available_engines()
    if engines is None:
        skipped = [name for name in DEFAULT_ENGINES if available.get(name) is not None]
        engines = [name for name in DEFAULT_ENGINES if name not in skipped]
        for name in skipped:
            echo(f"leaving out {name}: not available here ({available[name]})")
    engines, threads = list(engines), [int(t) for t in threads]
    common.check_names(engines, ENGINE_CHOICES, "--engines")
    common.check_counts(threads, "--threads")
    if blocks < 1:
        raise common.BenchError(f"--blocks must be >= 1 (got {blocks})")
    if not (math.isfinite(time_budget) and time_budget > 0):
        raise common.BenchError(f"--time-budget must be a positive number (got {time_budget})")
    for name, reason in available.items():
        if name in engines and reason is not None:
            raise common.BenchError(f"--engines {name}: not available here ({reason})")
    csv_target = common.check_csv_path(csv_path)
    common.check_out(out)

    section = {
        "threads": threads, "ranks": [], "filters": [FILTERS], "batch_sizes": [BATCH_SIZE],
        "seeds": [0], "time_budget": time_budget, "epochs": 1, "train_size": train_size,
    }  # fmt: skip
    configs = plan.tinycnn_configs(engines, section)
    epochs = plan.throughput_epochs(section)  # an upper bound: the time budget ends each run

    def run_one(run: plan.Run, block: int, stem: Path) -> None:
        first = run.configs[0]
        counts = [int(c["threads"]) for c in run.configs]
        cfg = train.TrainConfig(
            out=f"{stem}-threads{plan.THREADS_FIELD if run.interleaved else counts[0]}",
            engine=run.subject,
            threads=counts[0],
            filters=int(first["filters"]),
            batch_size=int(first["batch"]),
            epochs=epochs,
            seed=int(first["seed"]),
            train_size=train_size,
            test_size=test_size,
            block=block,
            time_budget=time_budget,
            timing_lock=timing_lock,
        )
        if run.interleaved:
            train.run_interleaved(cfg, counts)
        else:
            train.run(cfg)

    machine = this_machine()
    echo(f"cnnpar bench train on {machine.name}")
    echo(
        f"{blocks} block(s), each training TinyCNN F={FILTERS} B={BATCH_SIZE} {time_budget:g} s "
        "per engine and thread count"
    )
    echo(
        "in the plan's order (reversed in even blocks); numba and torch alternate their thread "
        "counts in one process"
    )
    with common.output_directory(out) as directory:
        common.run_blocks("train", configs, blocks, run_one, directory, echo)
        return common.finish(
            "train", directory, out is not None, csv_target, machine.cpu_model, echo
        )
