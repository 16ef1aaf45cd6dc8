"""What a study will cost before it starts: its timed jobs and their estimated wall time.

Timed jobs never overlap (they share one timing lock), so the study's wall time is the sum of
its timed jobs' times. Each job's time comes, in order of preference, from the Snakemake
benchmark file an earlier run of the same job left in the results directory, from the mean of
the same family job in other blocks, or from a model of its runs: a fixed start-up per run
(the interpreter, torch, the data, warm-up and the roofline probes), the time budget of each
training run, and each classification's cells at a modest rate per core, up to its time
budget; each grid's one whole-mosaic classification (the mask and the accuracy) on top. The
model errs long on a fast machine; a second run in the same results directory uses what the
first measured.
"""

from __future__ import annotations

import csv
import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from itertools import product
from pathlib import Path

from cnnpar import registry
from cnnpar.study import plan

# Seconds every timed run pays before and after its timed region: starting Python, importing
# torch and numba, loading MNIST, building and warming up the model, two pairs of roof probes
# (matmul and triad; the triad's first compile and page faults add about 1.5 s).
RUN_START_S = 5.5
# Each further thread count of an interleaved run: its own probes and warm-up.
PER_COUNT_S = 1.1
# Each worker process or rank a run starts: its own interpreter, torch and model.
PER_PROCESS_S = 1.5
# A modest inference rate per core for the cells of a classification (MosaicNet at float32).
CLASSIFY_GFLOPS_PER_CORE = 20.0
# Training rates for the full-length runs, images/s per core; the budgeted runs need none.
TRAIN_IMAGES_PER_S = {"numpy": 3_000.0, "numba": 60_000.0, "torch": 15_000.0}
DEFAULT_IMAGES_PER_S = 20_000.0


@dataclass(frozen=True)
class Job:
    """One timed job of the plan: its benchmark file (where Snakemake writes its wall time),
    how many runs it holds, and its modelled seconds."""

    benchmark: str
    runs: int
    model_s: float


@dataclass(frozen=True)
class Estimate:
    """The timed jobs of a study and their estimated seconds: per paired block, for the jobs
    outside the blocks (MosaicNet training, full-length runs), and for min..max blocks."""

    jobs_per_block: int
    runs_per_block: int
    block_s: float
    other_jobs: int
    other_s: float
    min_blocks: int
    max_blocks: int
    measured: int  # how many jobs' times came from earlier runs

    def total_s(self, blocks: int) -> float:
        return self.other_s + blocks * self.block_s

    def text(self) -> str:
        """One paragraph for the start of a run."""
        low, high = self.total_s(self.min_blocks), self.total_s(self.max_blocks)
        blocks = (
            f"{self.min_blocks} paired blocks"
            if self.min_blocks == self.max_blocks
            else f"{self.min_blocks} to {self.max_blocks} paired blocks (the stopping rule decides)"
        )
        span = (
            _duration(low)
            if self.min_blocks == self.max_blocks
            else (f"{_duration(low)} to {_duration(high)}")
        )
        source = (
            f"{self.measured} job(s) timed by earlier runs in this results directory, the "
            "rest modelled from the config"
            if self.measured
            else "modelled from the config (a later run here uses the measured times)"
        )
        return (
            f"cnnpar: {self.jobs_per_block} timed jobs ({self.runs_per_block} runs) per block, "
            f"{blocks}, and {self.other_jobs} other timed job(s); estimated wall time {span} "
            f"({source})"
        )


def _duration(seconds: float) -> str:
    minutes = seconds / 60
    if minutes < 90:
        return f"{minutes:.0f} min" if minutes >= 10 else f"{minutes:.1f} min"
    return f"{minutes / 60:.1f} h"


def train_run_s(engine: str, counts: int, budget: float) -> float:
    """A paired training run: start-up, and the budget at each of its `counts` thread counts."""
    processes = 0 if registry.ENGINES[engine].layout != "ranks" else 1
    return RUN_START_S + (counts - 1) * PER_COUNT_S + counts * budget + processes * PER_PROCESS_S


def classify_run_s(
    mode: str, cores: int, cells: int, repeats: int, budget: float | None = None
) -> float:
    """A paired classification: start-up (and its worker processes or ranks), and `repeats`
    classifications of `cells` cells at CLASSIFY_GFLOPS_PER_CORE per core; with a time
    `budget` (seconds), the shorter of those and the budget."""
    from cnnpar.nets.mosaicnet import FLOPS_PER_IMAGE

    entry = registry.MODES[mode]
    processes = cores if entry.layout in ("processes", "ranks") else 0
    rate = CLASSIFY_GFLOPS_PER_CORE * 1e9 * max(1, cores) / FLOPS_PER_IMAGE
    timed = repeats * cells / rate
    if budget is not None:
        timed = min(budget, timed)
    return RUN_START_S + processes * PER_PROCESS_S + timed


def classify_full_s(mode: str, cores: int, cells: int) -> float:
    """The whole-mosaic classification of a grid: one unbudgeted pass over its `cells`."""
    return classify_run_s(mode, cores, cells, repeats=1)


def run_s(
    run: plan.Run, budget: float, repeats: int, classify_budget: float | None = None
) -> float:
    """The modelled seconds of one run of a family job: `budget` is a training run's,
    `classify_budget` a classification's (None: whole passes)."""
    from cnnpar.mosaic import parse_grid

    if run.kind == "train":
        return train_run_s(run.subject, len(run.configs), budget)
    rows, cols = parse_grid(str(run.configs[0]["grid"]))
    return classify_run_s(run.subject, run.cores, rows * cols, repeats, classify_budget)


def full_run_s(engine: str, threads: int, epochs: int, train_size: int) -> float:
    """A full-length training run: `epochs` passes over `train_size` images."""
    rate = TRAIN_IMAGES_PER_S.get(engine, DEFAULT_IMAGES_PER_S)
    if registry.ENGINES[engine].parallel:
        rate *= threads**0.7  # scaling below linear, as the study usually finds
    return RUN_START_S + epochs * train_size / rate


def measured_seconds(benchmarks: str | os.PathLike[str]) -> dict[str, float]:
    """Wall seconds of every job an earlier run timed: Snakemake's benchmark files (a TSV
    whose `s` column is the job's wall time) under `benchmarks`, by path."""
    found: dict[str, float] = {}
    root = Path(benchmarks)
    if not root.is_dir():
        return found
    for path in root.rglob("*.tsv"):
        try:
            with path.open(newline="") as f:
                rows = list(csv.DictReader(f, delimiter="\t"))
            seconds = [float(r["s"]) for r in rows if r.get("s") not in (None, "", "NA")]
        except (OSError, ValueError, KeyError):
            continue  # a damaged file only costs its measurement
        if seconds and all(math.isfinite(s) for s in seconds):
            found[str(path)] = sum(seconds) / len(seconds)
    return found


BLOCK = re.compile(r"block~\d+")


def job_seconds(jobs: Iterable[Job], measured: Mapping[str, float]) -> tuple[float, int]:
    """The jobs' total seconds and how many came from `measured`: a job's own benchmark, else
    the mean of the same job in other blocks, else its model."""
    by_family: dict[str, list[float]] = {}
    for path, seconds in measured.items():
        by_family.setdefault(BLOCK.sub("block~*", path), []).append(seconds)
    total, from_runs = 0.0, 0
    for job in jobs:
        if job.benchmark in measured:
            total += measured[job.benchmark]
            from_runs += 1
        elif others := by_family.get(BLOCK.sub("block~*", job.benchmark)):
            total += sum(others) / len(others)
            from_runs += 1
        else:
            total += job.model_s
    return total, from_runs


def estimate_study(
    config: Mapping,
    engines: list[str],
    modes: list[str],
    grids: list[str],
    templates: Mapping[str, str],
    benchmarks: str | os.PathLike[str],
) -> Estimate:
    """The estimate of a validated, expanded config's study, for the engines and modes this
    run uses. `templates` are the workflow's benchmark paths (str.format templates) of the
    timed rules: train_family, train_gpu, classify_family, classify_gpu, train_tinycnn_full,
    train_mosaicnet, classify_full; `benchmarks` the directory earlier runs wrote them to."""
    from cnnpar.mosaic import parse_grid

    tinycnn, cls, mosaicnet = (
        config["train"]["tinycnn"],
        config["classify"],
        config["train"]["mosaicnet"],
    )
    budget, repeats = float(tinycnn["time_budget"]), int(cls["repeats"])
    classify_budget = cls.get("time_budget")
    train_configs = plan.tinycnn_configs(engines, tinycnn)
    classify_configs = plan.classify_configs(modes, grids, cls)
    block: list[Job] = []
    runs = 0
    for kind, configs in (("train", train_configs), ("classify", classify_configs)):
        for family in plan.families(configs, kind):
            members = [c for c in configs if plan.family_of(c, kind) == tuple(family.values())]
            cpu, gpu = [], []
            for c in members:
                entry = (
                    registry.ENGINES[c["engine"]]
                    if kind == "train"
                    else (registry.MODES[c["mode"]])
                )
                (gpu if entry.gpu else cpu).append(c)

            if cpu:
                family_runs = plan.family_runs(kind, cpu, 1)
                runs += len(family_runs)
                path = templates[f"{kind}_family"].format(block=1, **family)
                seconds = sum(run_s(r, budget, repeats, classify_budget) for r in family_runs)
                block.append(Job(path, len(family_runs), seconds))
            for c in gpu:
                runs += 1
                path = templates[f"{kind}_gpu"].format(block=1, **c)
                seconds = run_s(plan.Run(kind, (c,)), budget, repeats, classify_budget)
                block.append(Job(path, 1, seconds))
    other = [
        Job(templates["train_tinycnn_full"].format(**c), 1,
            full_run_s(c["engine"], c["threads"], int(tinycnn["epochs"]),
                       int(tinycnn["train_size"])))
        for c in plan.full_configs(train_configs)
    ]  # fmt: skip
    other += [
        Job(templates["train_mosaicnet"].format(seed=s), 1,
            full_run_s("torch", int(mosaicnet["threads"]), int(mosaicnet["epochs"]),
                       int(mosaicnet["train_size"])) * 4)  # a network ~4x TinyCNN's cost
        for s in cls["seeds"]
    ]  # fmt: skip
    for grid, seed in product(grids, cls["seeds"]):
        c = plan.full_classify_config(modes, grid, seed, cls)
        rows, cols = parse_grid(grid)
        seconds = classify_full_s(c["mode"], int(c["workers"]), rows * cols)
        other.append(Job(templates["classify_full"].format(grid=grid, seed=seed), 1, seconds))
    precision = plan.precision(config)
    measured = measured_seconds(benchmarks)
    block_s, block_measured = job_seconds(block, measured)
    other_s, other_measured = job_seconds(other, measured)
    return Estimate(
        jobs_per_block=len(block),
        runs_per_block=runs,
        block_s=block_s,
        other_jobs=len(other),
        other_s=other_s,
        min_blocks=precision.min_blocks,
        max_blocks=precision.max_blocks,
        measured=block_measured + other_measured,
    )
