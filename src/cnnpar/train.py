"""The engine-agnostic training loop behind `cnnpar train`: one loop (`_train`) for every run.

    config → validate everything (before any work) → set threads → load MNIST → build engine →
    warm-up (compile; not timed) → epochs: [timed: load epoch, every step, read back stats] →
    evaluate on the test digits (not timed) → write weights, metrics.csv, run.json atomically.

Two strategies vary it: how ranks start (this process alone, or torch.distributed ranks through
`cnnpar.ranks`, rank 0 writing) and which thread counts take turns (`run_interleaved`: one
engine and run directory per count, in alternating windows; one count is one long window).

The loop sees only the engine protocol of `cnnpar.nets.tinycnn` (load_epoch, train_step,
epoch_stats, predict), so TinyCNN on any engine and MosaicNet (through the shared torch step,
`cnnpar.nets.torch_step.TorchTrainer`) are trained, timed and recorded the same way.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import sys
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from cnnpar import io, limits
from cnnpar import ranks as ranks_mod
from cnnpar.data import COUNTS, Mnist, check_mirrors, load_mnist
from cnnpar.errors import CnnparError
from cnnpar.measure.environment import environment
from cnnpar.measure.interference import DEFAULT_LOCK, Interference, Limits, TimedRegion
from cnnpar.measure.machine import this_machine
from cnnpar.measure.threads import (
    effective_threads,
    numba_threading_layer,
    set_threads,
    switch_threads,
)
from cnnpar.measure.timing import alternating
from cnnpar.nets import tinycnn, training
from cnnpar.nets.tinycnn import spec
from cnnpar.nets.training import EVAL_CHUNK
from cnnpar.record import Parallelism, RunRecord
from cnnpar.registry import ENGINES, MODELS, engines_for

METRIC_FIELDS = (
    "epoch",
    "images",  # training images in the timed region: all of them, or fewer under a time budget
    "seconds",
    "images_per_s",
    "train_loss",
    "train_acc",
    "test_loss",
    "test_acc",
)
# An epoch's mean cross-entropy above this many times its value at random guessing, ln(10)
# ≈ 2.30, is divergence as much as a NaN is: training moves the loss down from about ln(10),
# so a mean of 23 means logits that blew up (a too-large --lr), however finite.
DIVERGED_LOSS = 10 * math.log(spec.CLASSES)


class TrainConfigError(CnnparError):
    """An argument of `cnnpar train` is out of range or does not fit the model."""


class TrainDivergedError(CnnparError):
    """The training loss became NaN or infinite, or an epoch's mean rose above DIVERGED_LOSS."""


@dataclass(frozen=True)
class TrainConfig:
    out: str
    model: str = "tinycnn"
    engine: str | None = None
    threads: int = 1
    filters: int | None = None
    batch_size: int | None = None
    epochs: int | None = None
    lr: float | None = None
    seed: int = 0
    train_size: int = COUNTS["train"]
    test_size: int = COUNTS["test"]
    shuffle: bool = True
    data_source: str = "bundled"
    mirrors: tuple[str, ...] = ()  # for data_source "download"; empty: the public mirrors
    block: int | None = None  # the study's paired block this run belongs to, if any
    time_budget: float | None = None  # stop at the first step after this many timed seconds
    ranks: int = 1  # torch.distributed ranks (engines whose layout is "ranks"), --threads each
    rank_timeout: float = ranks_mod.DEFAULT_TIMEOUT_S  # a collective waits this long for a rank
    timing_lock: str | None = str(DEFAULT_LOCK)
    limits: Limits = field(default_factory=Limits)
    machine_label: str | None = None  # part of the machine identity in the record

    def resolved(self) -> TrainConfig:
        """This config with the model's defaults filled in for every None."""
        if self.model not in MODELS:
            raise TrainConfigError(
                f"unknown model {self.model!r}; choose one of {', '.join(MODELS)}"
            )
        model = MODELS[self.model]
        defaults = {"engine": model.default_engine, **model.defaults}
        fill = {k: v for k, v in defaults.items() if getattr(self, k) is None}
        return dataclasses.replace(self, **fill)


def validate(cfg: TrainConfig) -> TrainConfig:
    """Check every argument and the output directory; return the resolved config.

    Runs before any data is loaded or any file is written, so a bad argument costs nothing and
    leaves nothing behind. That includes counts and sizes this machine cannot run (`limits`).
    """
    cfg = cfg.resolved()
    checks = [
        (cfg.threads >= 1, f"--threads must be >= 1 (got {cfg.threads})"),
        (cfg.batch_size >= 1, f"--batch-size must be >= 1 (got {cfg.batch_size})"),
        (cfg.epochs >= 1, f"--epochs must be >= 1 (got {cfg.epochs})"),
        (
            math.isfinite(cfg.lr) and cfg.lr > 0,
            f"--lr must be a positive finite number (got {cfg.lr})",
        ),
        (cfg.seed >= 0, f"--seed must be >= 0 (got {cfg.seed})"),
        (
            cfg.time_budget is None or (math.isfinite(cfg.time_budget) and cfg.time_budget > 0),
            f"--time-budget must be a positive number of seconds (got {cfg.time_budget})",
        ),
        (
            1 <= cfg.train_size <= COUNTS["train"],
            f"--train-size must be in 1..{COUNTS['train']} (got {cfg.train_size})",
        ),
        (
            1 <= cfg.test_size <= COUNTS["test"],
            f"--test-size must be in 1..{COUNTS['test']} (got {cfg.test_size})",
        ),
    ]
    engine = ENGINES.get(cfg.engine)
    if engine is not None and engine.ranks:
        checks.append(
            (
                math.isfinite(cfg.rank_timeout) and cfg.rank_timeout > 0,
                f"--rank-timeout must be a positive number of seconds (got {cfg.rank_timeout})",
            )
        )
    elif engine is not None and cfg.ranks != 1:
        ranked = " or ".join(e.name for e in ENGINES.values() if e.ranks)
        checks.append((False, f"--ranks applies to --engine {ranked} only (got {cfg.ranks})"))
    model = MODELS[cfg.model]
    if "filters" in model.options:
        checks.append((cfg.filters >= 1, f"--filters must be >= 1 (got {cfg.filters})"))
    for ok, message in checks:
        if not ok:
            raise TrainConfigError(message)
    check_mirrors(cfg.mirrors, cfg.data_source)
    if cfg.engine in ENGINES and cfg.model not in ENGINES[cfg.engine].models:
        raise TrainConfigError(
            f"--model {cfg.model} does not train with engine {cfg.engine}; "
            f"use --engine {' or '.join(engines_for(cfg.model))}"
        )
    tinycnn.get_engine(cfg.engine)  # unknown or unavailable engine: a one-line error
    limits.check_parallelism(cfg.threads, "--threads")
    if ENGINES[cfg.engine].ranks:
        limits.check_parallelism(cfg.ranks, "--ranks")
        ranks_mod.check_layout(cfg.ranks, cfg.threads)  # before any rank starts
    what = f"--model {cfg.model}" + "".join(
        f" --{option} {getattr(cfg, option)}" for option in model.options
    )
    limits.check_memory(
        memory_estimate(cfg),
        f"training {what} --batch-size {cfg.batch_size} --threads {cfg.threads}",
        model.shrink,
    )
    io.check_run_directory(cfg.out, MODELS[cfg.model].outputs)
    return cfg


def trainer(cfg: TrainConfig) -> training.Trainer:
    """The model's trainer (`registry.Model.trainer`): memory estimate, engine, outputs."""
    return getattr(training, MODELS[cfg.model].trainer)


def memory_estimate(cfg: TrainConfig) -> int:
    """Bytes a training run with the resolved `cfg` needs at least (the model's estimate)."""
    return trainer(cfg).memory_estimate(cfg)


# --- the loop -----------------------------------------------------------------------------


def evaluate(predict: Callable[[np.ndarray], np.ndarray], data: Mnist) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of `predict`'s logits over `data`."""
    loss_sum = 0.0
    correct = 0
    for lo in range(0, len(data.labels), EVAL_CHUNK):
        logits = np.asarray(predict(data.images[lo : lo + EVAL_CHUNK]), np.float64)
        y = data.labels[lo : lo + EVAL_CHUNK].astype(np.int64)
        shifted = logits - logits.max(axis=1, keepdims=True)
        log_z = np.log(np.exp(shifted).sum(axis=1))
        loss_sum += float((log_z - shifted[np.arange(len(y)), y]).sum())
        correct += int((logits.argmax(axis=1) == y).sum())
    n = len(data.labels)
    return loss_sum / n, correct / n


def train_windows(
    engine: tinycnn.Engine,
    train: Mnist,
    test: Mnist,
    *,
    batch_size: int,
    epochs: int,
    seed: int,
    shuffle: bool,
    progress: bool | None = None,
    time_budget: float | None = None,
    window_s: float = math.inf,
) -> Generator[None, None, list[dict[str, float | int]]]:
    """Train `engine` in place, pausing (yield) after each `window_s` seconds of training;
    return one metrics row per epoch (StopIteration.value).

    `seconds` covers handing the epoch's data to the engine, every step, and reading the step
    statistics back (which waits for a GPU to finish); test evaluation is outside it. With a
    `time_budget`, training stops at the first step boundary after that many timed seconds
    (throughput needs seconds, not epochs); the last row then counts only the images trained.
    Each window ends on a step boundary with the statistics read back, so its work is done
    inside its own time; only the time between a resume and the next pause counts, not what
    runs while it is paused (another thread count's window). Raises TrainDivergedError.
    """
    from tqdm.auto import tqdm

    if progress is None:
        progress = sys.stderr.isatty()
    n = len(train.labels)
    rows = []
    spent = 0.0
    window = 0.0  # timed seconds of the current window
    # Data-parallel ranks must run the same steps: they agree on stopping (engine.agree).
    agree = getattr(engine, "agree", None) if time_budget is not None else None
    if agree is None:

        def agree(stop: bool) -> bool:
            return stop

    for epoch in range(epochs):
        order = spec.epoch_order(n, epoch, seed, shuffle)
        images, labels = train.images[order], train.labels[order].astype(np.int64)
        bounds = list(spec.batch_bounds(n, batch_size))
        bar = tqdm(
            total=len(bounds),
            desc=f"epoch {epoch + 1}/{epochs}",
            unit="step",
            disable=not progress,
            leave=False,
        )
        deadline = math.inf if time_budget is None else time_budget - spent
        seconds = 0.0  # this epoch's timed seconds, summed over its windows
        segment_start = time.perf_counter()  # the epoch's start, or the last resume
        engine.load_epoch(images, labels)
        steps = 0
        for start, stop in bounds:
            engine.train_step(start, stop)
            steps += 1
            bar.update()
            now = time.perf_counter()
            if agree(seconds + now - segment_start >= deadline):
                break
            if window + now - segment_start >= window_s:
                engine.epoch_stats()  # the window's steps done inside its own time
                seconds += time.perf_counter() - segment_start
                yield
                window = 0.0
                segment_start = time.perf_counter()
        losses, correct = engine.epoch_stats()
        segment = time.perf_counter() - segment_start
        seconds += segment
        window += segment  # a window may span epochs (short ones)
        bar.close()
        sizes = np.array([stop - start for start, stop in bounds[:steps]], np.float64)
        trained = int(sizes.sum())
        train_loss = float((losses * sizes).sum() / trained)  # mean over images
        # Once per epoch, from the statistics read back anyway: no extra sync per step.
        if not math.isfinite(train_loss) or train_loss > DIVERGED_LOSS:
            bound = f" (over 10 × ln 10 = {DIVERGED_LOSS:.1f})" if math.isfinite(train_loss) else ""
            raise TrainDivergedError(
                f"training diverged: the training loss is {train_loss:.4g}{bound} in epoch "
                f"{epoch + 1}; use a smaller --lr"
            )
        test_loss, test_acc = evaluate(engine.predict, test)
        rows.append(
            {
                "epoch": epoch + 1,
                "images": trained,
                "seconds": seconds,
                "images_per_s": trained / seconds,
                "train_loss": train_loss,
                "train_acc": float(correct.sum() / trained),
                "test_loss": test_loss,
                "test_acc": test_acc,
            }
        )
        spent += seconds
        if agree(spent >= (time_budget or math.inf)):
            break
    return rows


# --- the command --------------------------------------------------------------------------


@dataclass
class TrainResult:
    out: Path
    rows: list[dict[str, float | int]]
    record: RunRecord


def run_record(
    cfg: TrainConfig,
    parallelism: Parallelism,
    results: dict,
    outputs: list[str],
    interference: Interference | None = None,
    machine_cpus: int | None = None,
) -> RunRecord:
    """The run record of a training run with the resolved config `cfg`; `machine_cpus` (a
    ranked run) is the CPUs the job may use on rank 0's node, for the machine identity."""
    return RunRecord(
        command="train",
        model=cfg.model,
        params={
            k: v
            for k, v in dataclasses.asdict(cfg).items()
            # how it was guarded and where, not what ran
            if k not in ("out", "timing_lock", "limits", "rank_timeout", "machine_label")
        },
        parallelism=parallelism,
        results=results,
        outputs=outputs,
        environment=environment().as_dict(),
        interference=interference,
        machine=this_machine(cfg.machine_label, cpus=machine_cpus),
    )


def run(cfg: TrainConfig, progress: bool | None = None) -> TrainResult | None:
    """`cnnpar train`: validate, train, and write the run directory. None on the ranks other
    than 0 of a data-parallel run under srun (rank 0 writes)."""
    cfg = validate(cfg)
    if (how := tinycnn.not_as_named_here(cfg.engine)) is not None:
        print(
            f"cnnpar: warning: engine {cfg.engine} runs {how}; its timings do not measure the "
            "engine (the run record and the report say so)",
            file=sys.stderr,
        )
    results = _launch([cfg], progress)
    return None if results is None else results[0]


# The windows `run_interleaved` alternates thread counts in. This VM's vCPUs slow down in
# stretches of 0.1-3 s (a barrier-synchronised 2-thread step whenever either one is slow):
# 0.1-second windows put a 1-thread and a 2-thread window inside the same stretch, where jobs
# seconds apart see different ones. Long enough that switching the pools' width costs nothing.
INTERLEAVE_WINDOW_S = 0.1
THREADS_FIELD = "{threads}"  # where `run_interleaved`'s out template puts each thread count


def interleaved_configs(cfg: TrainConfig, thread_counts: Sequence[int]) -> list[TrainConfig]:
    """One validated config per thread count for `run_interleaved`, `cfg.out` a template with
    {threads}. Raises TrainConfigError (one line) when the thread counts cannot interleave."""
    counts = list(thread_counts)
    engine = ENGINES.get(cfg.engine or MODELS[cfg.model].default_engine)
    checks = [
        (len(set(counts)) == len(counts), f"--threads lists a count twice ({counts})"),
        (
            engine is not None and engine.switches_threads,
            "several --threads interleave in one process only on "
            + " or ".join(e.name for e in ENGINES.values() if e.switches_threads)
            + f" (got --engine {cfg.engine}); run one --threads per command",
        ),
        (
            cfg.time_budget is not None,
            "several --threads need --time-budget (each thread count trains that long)",
        ),
        (
            THREADS_FIELD in cfg.out,
            f"several --threads need {THREADS_FIELD} in --out (one run directory per count, "
            f"e.g. --out 'runs/threads~{THREADS_FIELD}')",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise TrainConfigError(message)
    return [
        validate(dataclasses.replace(cfg, threads=t, out=cfg.out.replace(THREADS_FIELD, str(t))))
        for t in counts
    ]


def run_interleaved(cfg: TrainConfig, thread_counts: Sequence[int]) -> list[TrainResult]:
    """`cnnpar train --threads 1,2 --time-budget S --out DIR/threads~{threads}`: the same
    training at several thread counts in one process, timed in alternating windows.

    One engine per thread count, each from the same initial weights and on the same data,
    trains for `time_budget` seconds in windows of INTERLEAVE_WINDOW_S, the thread counts taking
    turns (order reversed every round), so a ratio between them compares windows a fraction of
    a second apart (Hoefler & Belli, SC'15: pair what is compared in time). Writes one run
    directory (and record) per thread count, as separate runs would. Raises TrainConfigError
    for arguments that cannot interleave.
    """
    return _launch(interleaved_configs(cfg, thread_counts), progress=False) or []


# --- the one run loop and its strategies --------------------------------------------------
# How ranks are started: this process alone, or torch.distributed ranks (`cnnpar.ranks`,
# `_train_rank`). Which thread counts take turns: one config per count, each training in
# windows; a single count is the degenerate case (one window as long as its training).


def _host_threads(cfg: TrainConfig) -> int:
    """The numpy reference and the GPU engines use one host thread; the others get --threads."""
    return cfg.threads if ENGINES[cfg.engine].parallel else 1


def _launch(cfgs: list[TrainConfig], progress: bool | None) -> list[TrainResult] | None:
    """Start the run loop for the validated `cfgs` (one per thread count taking turns) in this
    process, or on `ranks` torch.distributed ranks for a ranks engine (one config); rank 0's
    results, None on the other ranks of an srun step. Raises RankError when a rank fails."""
    cfg, engine = cfgs[0], ENGINES[cfgs[0].engine]
    if engine.ranks:
        region = partial(
            TimedRegion,
            threads=cfg.ranks * cfg.threads,
            device=engine.device,
            limits=cfg.limits,
            lock=cfg.timing_lock,
        )
        return ranks_mod.run(
            _train_rank,
            (cfg, progress, ranks_mod.oversubscription(cfg.ranks, cfg.threads)),
            ranks=cfg.ranks,
            threads=cfg.threads,
            timeout_s=cfg.rank_timeout,
            region=region,
        )
    # Pools first, at the widest count: starting torch's (and numba's) OpenMP can narrow the
    # CPUs this process may use, so the CPUs are counted after.
    widest = max(_host_threads(c) for c in cfgs)
    set_threads(widest, numba=engine.numba_target == "cpu")
    load = limits.oversubscription(processes=1, threads_per_process=widest)
    return _train(None, cfgs, progress, load)


def _train_rank(
    ctx: ranks_mod.RankContext, cfg: TrainConfig, progress: bool | None, load: dict
) -> list[TrainResult] | None:
    """One rank of a data-parallel run: every rank trains its shards; rank 0 writes."""
    return _train(ctx, [cfg], bool(progress) and ctx.rank == 0, load)


def _train(
    ctx: ranks_mod.RankContext | None,
    cfgs: list[TrainConfig],
    progress: bool | None,
    load: dict,
) -> list[TrainResult] | None:
    """The one run loop: load the data, build one engine per config, warm each up and train
    them taking turns inside the timed region, then write one run directory per config.

    `ctx` is None in a process of its own, which holds the timed region over warm-up and
    training (the lock keeps other timed runs out; probes and CPU accounting tell whether
    anything else got in); a rank's context otherwise, whoever started the ranks holding it.
    `cfgs` are validated configs, one per thread count (one for ranks): several train in
    windows of INTERLEAVE_WINDOW_S, order reversed every round, the pools switched to each
    count's width for its windows and its probe; each count is built at its own width, since an
    engine reads the count it runs with when built. `load` is `limits.oversubscription`'s.
    Returns the results in `cfgs` order; None on ranks other than 0.
    """
    cfg, engine = cfgs[0], ENGINES[cfgs[0].engine]
    turns = len(cfgs) > 1

    def switch(threads: int) -> None:
        if turns:  # one count: the pools stay as they were started
            switch_threads(threads, numba=engine.numba_target == "cpu")

    train = _first(load_mnist("train", cfg.data_source, cfg.mirrors), cfg.train_size)
    test = _first(load_mnist("test", cfg.data_source, cfg.mirrors), cfg.test_size)
    built = []
    for c in cfgs:
        switch(c.threads)
        built.append(trainer(c).build(c, _host_threads(c)))
    region: Any = contextlib.nullcontext()
    if ctx is None:
        region = TimedRegion(
            threads=[_host_threads(c) for c in cfgs],
            device=engine.device,
            limits=cfg.limits,
            lock=cfg.timing_lock,
            switch=switch,
        )
    threads, warmup_s, windows = [], [], []
    rows: dict[int, list[dict]] = {}
    rounds = 0
    with region:
        if ctx is not None:
            import torch.distributed as dist

            dist.barrier()  # every rank built: the clock starts together
        for c, b in zip(cfgs, built, strict=True):
            switch(c.threads)
            threads.append(effective_threads())  # read while this count is in effect
            warm_start = time.perf_counter()
            b.engine.warm_up()
            warmup_s.append(time.perf_counter() - warm_start)
            windows.append(
                train_windows(
                    b.engine,
                    train,
                    test,
                    batch_size=c.batch_size,
                    epochs=c.epochs,
                    seed=c.seed,
                    shuffle=c.shuffle,
                    progress=progress,
                    time_budget=c.time_budget,
                    window_s=INTERLEAVE_WINDOW_S if turns else math.inf,
                )
            )
        # Overflow shows as a NaN, infinite or huge loss, checked per epoch; NumPy's warnings
        # would only print source lines first.
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            while len(rows) < len(windows):
                for i in alternating([i for i in range(len(cfgs)) if i not in rows], rounds):
                    switch(cfgs[i].threads)
                    try:
                        next(windows[i])
                    except StopIteration as done:
                        rows[i] = done.value
                rounds += 1

    cpus = int(load["cpus_available"])
    if ctx is None:
        interference = [region.results[_host_threads(c)] for c in cfgs]
        # Threads beyond the CPUs this process may use take turns (a taskset-confined run).
        parallelism = [
            Parallelism(
                requested=c.threads,
                effective=min(int(b.engine.threads), cpus),
                processes=1,
                threads=t,
            )
            for c, b, t in zip(cfgs, built, threads, strict=True)
        ]
        extra: dict[str, Any] = {}
        if turns:
            extra["interleaved"] = {
                "threads": [c.threads for c in cfgs],
                "window_s": INTERLEAVE_WINDOW_S,
                "rounds": rounds,
            }
        machine_cpus = None
    else:
        interference = [ctx.end_timed()]
        timings = built[0].engine.timings()
        per_rank = ctx.gather_ranks({k: timings[k] for k in ("compute_s", "comm_s", "comm_share")})
        if ctx.rank != 0:
            return None
        parallelism = [
            Parallelism(
                requested=cfg.ranks * cfg.threads,  # the job's cores, as for the other engines
                # on one machine, at most its CPUs (ranks beyond them take turns)
                effective=_effective_cores(per_rank, cpus),
                processes=cfg.ranks,
                threads=threads[0],
            )
        ]
        extra = {
            "launcher": ctx.placement.launcher,
            "world_size": ctx.world_size,
            # rank 0's steps: compute vs all-reduce seconds (the rate counts the whole step)
            **timings,
            "ranks": per_rank,
        }
        machine_cpus = ctx.placement.node_cpus
    results = []
    for i, c in enumerate(cfgs):
        record = run_record(
            c,
            parallelism[i],
            results={**_results(c, built[i], warmup_s[i], rows[i], load), **extra},
            outputs=list(MODELS[c.model].outputs),
            interference=interference[i],
            machine_cpus=machine_cpus,
        )
        results.append(_write(c, built[i], rows[i], record))
    return results


def _results(
    cfg: TrainConfig, built: training.Built, warmup_s: float, rows: list[dict], load: dict
) -> dict[str, Any]:
    """The `results` of a training run's record, before its strategy's own."""
    return {
        "numba_threading_layer": numba_threading_layer() if cfg.engine == "numba" else None,
        "parameters": built.parameters,
        "flops_per_image": built.flops_per_image,
        "bytes_per_image": built.bytes_per_image,  # compulsory traffic (the roofline's bytes)
        "working_set_bytes": built.working_set_bytes,  # of one step: decides which roof applies
        "warmup_s": warmup_s,
        "train_seconds": sum(r["seconds"] for r in rows),
        "train_images": sum(r["images"] for r in rows),
        "final_test_acc": rows[-1]["test_acc"],
        "final_test_loss": rows[-1]["test_loss"],
        **load,
    }


def _write(cfg: TrainConfig, built: training.Built, rows: list[dict], record: RunRecord):
    """Write the run directory `cfg.out` atomically: weights, metrics.csv, run.json last."""
    out = Path(cfg.out)
    with io.run_directory(out) as tmp:
        trainer(cfg).write(tmp, built)
        io.write_csv(tmp / "metrics.csv", rows, fieldnames=METRIC_FIELDS)
        record.write(tmp)  # last: its presence means the directory is complete
    return TrainResult(out=out, rows=rows, record=record)


def _effective_cores(per_rank: list[dict[str, Any]], cpus: int) -> int:
    """The cores' worth of threads the ranks ran with: their torch threads, summed per host,
    each host's sum at most `cpus` (the CPUs rank 0's machine could use, taken as every
    host's)."""
    per_host: dict[str, int] = {}
    for rank in per_rank:
        host = str(rank.get("host"))
        per_host[host] = per_host.get(host, 0) + int(rank["torch_threads"])
    return sum(min(n, cpus) for n in per_host.values())


def _first(data: Mnist, n: int) -> Mnist:
    return Mnist(images=data.images[:n], labels=data.labels[:n])


def format_row(row: dict[str, float | int]) -> str:
    return (
        f"epoch {row['epoch']}: {row['seconds']:.2f} s train ({row['images_per_s']:,.0f} images/s)"
        f"  train loss {row['train_loss']:.4f} acc {row['train_acc']:.4f}"
        f"  test loss {row['test_loss']:.4f} acc {row['test_acc']:.4f}"
    )


def engines_table() -> list[tuple[str, str]]:
    """(engine, 'available' or the reason it is not) for `cnnpar engines`."""
    rows = []
    for name, reason in tinycnn.available_engines().items():
        status = reason or "available"
        if reason is None and (how := tinycnn.not_as_named_here(name)) is not None:
            status = f"available, but runs {how}"
        rows.append((name, status))
    return rows
