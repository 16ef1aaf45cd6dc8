"""What a classification run is asked to do, and every check that can reject it before any work."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from cnnpar import limits
from cnnpar.data import check_mirrors
from cnnpar.errors import CnnparError
from cnnpar.measure.interference import DEFAULT_LOCK, Limits
from cnnpar.mosaic import check_geometry
from cnnpar.ranks import DEFAULT_TIMEOUT_S as DEFAULT_RANK_TIMEOUT_S
from cnnpar.registry import BACKENDS, CLASSIFY_OUTPUTS, MODES

RESULT_FILES = CLASSIFY_OUTPUTS  # a run directory, besides run.json
# Bytes per mosaic cell held by the classifying command: the index (int64), true label,
# prediction, confidence (float32), and the mask's per-cell temporaries (correct, alpha, done).
PARENT_BYTES_PER_CELL = 8 + 1 + 1 + 4 + 1 + 4 + 1
# ... and by each worker process: its own copy of the index, its chunk's predictions.
WORKER_BYTES_PER_CELL = 8 + 1 + 4
# ... on top of an interpreter with torch, the net and the test digits loaded (~350 MB measured).
WORKER_BASE_BYTES = 300 * 10**6


class ClassifyError(CnnparError):
    """A classification request that cannot run as asked."""


@dataclass(frozen=True)
class ClassifyConfig:
    weights: Path
    rows: int
    cols: int
    out: Path | None = None  # the run directory; None runs without writing anything
    mode: str = "sequential"
    workers: int = 1
    batch_size: int = 256
    seed: int = 0
    repeats: int = 1
    # seconds of timed classification, in whole batches from cell 0; None: whole passes only
    time_budget: float | None = None
    backend: str = "auto"
    # What "auto" chose on the CPU and why (set by `run` from a per-machine measurement);
    # None: not chosen yet, and "auto" stands for mkldnn.
    chosen_backend: str | None = None
    backend_choice: str = ""
    data_source: str = "bundled"
    mirrors: tuple[str, ...] = ()  # for data_source "download"; empty: the public mirrors
    tune_malloc: bool = True
    block: int | None = None  # the study's paired block this run belongs to, if any
    ranks: int = 1  # ranks mode: torch.distributed ranks ...
    threads: int = 1  # ... of this many torch threads each
    rank_timeout: float = DEFAULT_RANK_TIMEOUT_S
    timing_lock: str | None = str(DEFAULT_LOCK)
    limits: Limits = field(default_factory=Limits)
    machine_label: str | None = None  # part of the machine identity in the record

    @property
    def device(self) -> str:
        return MODES[self.mode].device

    @property
    def grid(self) -> str:
        return f"{self.rows}x{self.cols}"

    @property
    def processes(self) -> int:
        """Classifying processes besides this one (workers in processes mode)."""
        return MODES[self.mode].worker_processes(self.workers)

    @property
    def cores(self) -> int:
        """Cores' worth of parallelism asked for: --workers, or --ranks x --threads."""
        return self.ranks * self.threads if MODES[self.mode].ranks else self.workers

    @property
    def resolved_backend(self) -> str:
        if self.backend != "auto":
            return self.backend
        if self.device == "cuda":
            return "eager"
        return self.chosen_backend or "mkldnn"


def validate(config: ClassifyConfig) -> None:
    """Raise ClassifyError for any request we can reject before touching data or weights."""
    if config.mode not in MODES:
        raise ClassifyError(f"unknown mode {config.mode!r}; choose one of {', '.join(MODES)}")
    if config.backend not in BACKENDS:
        raise ClassifyError(
            f"unknown backend {config.backend!r}; choose one of {', '.join(BACKENDS)}"
        )
    check_geometry(config.rows, config.cols)
    check_mirrors(config.mirrors, config.data_source)
    for name in ("workers", "batch_size", "repeats", "ranks", "threads"):
        value = getattr(config, name)
        if value < 1:
            raise ClassifyError(f"{name.replace('_', '-')} must be >= 1 (got {value})")
    budget = config.time_budget
    if budget is not None and not (math.isfinite(budget) and budget > 0):
        raise ClassifyError(
            f"--time-budget must be a positive finite number of seconds (got {budget})"
        )
    mode = MODES[config.mode]
    if not mode.parallel and config.workers != 1:
        parallel = "|".join(m.name for m in MODES.values() if m.parallel)
        raise ClassifyError(
            f"{config.mode} mode runs one worker (got --workers {config.workers}); "
            f"use --workers 1, or --mode {parallel} to run several"
        )
    if mode.ranks:
        if not (config.rank_timeout > 0 and config.rank_timeout < float("inf")):
            raise ClassifyError(
                f"--rank-timeout must be a positive number of seconds (got {config.rank_timeout})"
            )
        from cnnpar.ranks import check_layout

        limits.check_parallelism(config.ranks, "--ranks")
        limits.check_parallelism(config.threads, "--threads")
        check_layout(config.ranks, config.threads)  # before any rank starts
    elif (config.ranks, config.threads) != (1, 1):
        ranked = "|".join(m.name for m in MODES.values() if m.ranks)
        raise ClassifyError(
            f"--ranks and --threads apply to --mode {ranked} only "
            f"(got --ranks {config.ranks} --threads {config.threads}); use --workers with "
            f"--mode {config.mode}"
        )
    if mode.device == "cuda":
        if BACKENDS[config.resolved_backend].cpu_only:
            usable = " or ".join(b.name for b in BACKENDS.values() if not b.cpu_only)
            raise ClassifyError(
                f"backend {config.backend} runs on the CPU only; use --backend {usable} "
                f"with --mode {config.mode}"
            )
        import torch

        if not torch.cuda.is_available():
            cpu = "|".join(m.name for m in MODES.values() if m.device == "cpu")
            raise ClassifyError(
                f"{config.mode} mode needs a CUDA GPU, and torch sees none "
                f"(torch.cuda.is_available() is False); use --mode {cpu}"
            )
    limits.check_parallelism(config.workers, "--workers")
    limits.check_memory(
        memory_estimate(config),
        f"classifying a {config.grid} mosaic with --batch-size {config.batch_size} and "
        f"--workers {config.workers} ({config.mode})",
        "use fewer --rows/--cols, a smaller --batch-size or fewer --workers",
    )
    if config.out is not None:
        from cnnpar.io import check_run_directory

        check_run_directory(config.out, RESULT_FILES)


def memory_estimate(config: ClassifyConfig) -> int:
    """Bytes a run needs at least in host memory: the per-cell arrays of this process and of
    each worker, each worker's interpreter, and one batch's activations (the warm-up batch is no
    larger than the mosaic) in each process that runs the net. An order-of-magnitude check, not
    a budget."""
    from cnnpar.nets.mosaicnet import ACTIVATION_FLOATS

    cells = config.rows * config.cols
    batch = min(config.batch_size, cells)
    net_processes = 0 if config.device == "cuda" else max(1, config.processes, config.ranks)
    return (
        cells * (PARENT_BYTES_PER_CELL + config.processes * WORKER_BYTES_PER_CELL)
        + config.processes * WORKER_BASE_BYTES
        + net_processes * 4 * batch * ACTIVATION_FLOATS
    )
