"""Classify every cell of a mosaic with MosaicNet, in one of the modes of `registry.MODES`.

config → validate (before any work) → pin threads, tune malloc → load weights and digits →
start the mode's runner and warm it up (timed as ``startup_s``) → classify `repeats` times
(each timed as ``classify_s``, the runner kept alive) → write the run directory if asked.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import numpy as np

from cnnpar import limits
from cnnpar.classify import runners
from cnnpar.classify.config import ClassifyConfig, ClassifyError, validate
from cnnpar.classify.outputs import Classification, summary_lines, write_outputs
from cnnpar.classify.runners import chunk_bounds, classify_range
from cnnpar.data import Mnist, load_mnist
from cnnpar.measure.environment import allocator, tune_malloc
from cnnpar.measure.interference import TimedRegion
from cnnpar.measure.threads import set_threads
from cnnpar.measure.timing import measure
from cnnpar.mosaic import Mosaic, make_mosaic
from cnnpar.nets.mosaicnet import load_weights
from cnnpar.registry import MODES

__all__ = [
    "Classification",
    "ClassifyConfig",
    "ClassifyError",
    "chunk_bounds",
    "classify_range",
    "run",
    "summary_lines",
    "validate",
    "write_outputs",
]


def run(config: ClassifyConfig, progress: bool = False) -> Classification | None:
    """Load, start the mode's runner, classify `config.repeats` times; write `config.out` if set.

    None only on a rank other than 0 of a ranks-mode run that srun started (rank 0 reports)."""
    validate(config)
    mode = MODES[config.mode]
    if mode.ranks:
        return _run_ranks(config, progress)
    load = limits.oversubscription(
        processes=max(1, config.processes), threads_per_process=mode.host_threads(config.workers)
    )
    # Start-up and every repeat run inside the guarded region (lock, probes at the run's own
    # parallelism, other processes' CPU share): start-up is part of what a user pays.
    region = TimedRegion(
        threads=config.workers if mode.parallel else 1,
        device=mode.device,
        limits=config.limits,
        lock=config.timing_lock,
    )
    outputs: list[runners.Output] = []
    with region:
        t0 = time.perf_counter()
        # Thread counts first: torch sizes its OpenMP pool at the first parallel op.
        set_threads(mode.host_threads(config.workers))
        malloc = tune_malloc() if config.tune_malloc else allocator()
        # A bad weights file fails before real work; weights saved under other names say so.
        _, weights_note = load_weights(config.weights, config.device)
        if weights_note:
            print(f"cnnpar: note: {weights_note}", file=sys.stderr)
        test = load_mnist("test", config.data_source, config.mirrors)
        mosaic = make_mosaic(config.rows, config.cols, config.seed)
        runner: runners.Runner = getattr(runners, mode.runner)(config, mosaic, test.images)
        startup_s = time.perf_counter() - t0
        try:
            measurement = measure(
                lambda: outputs.append(runner.classify(progress)),
                repeats=config.repeats,
                warmup=0,  # the runner warmed up inside startup_s
                sync=_cuda_sync if mode.device == "cuda" else None,
            )
        finally:
            runner.close()
    return _finish(
        config,
        mosaic,
        test,
        outputs,
        runner,
        startup_s=startup_s,
        measurement=measurement,
        malloc=malloc,
        interference=region.result,
        load=load,
        weights_note=weights_note,
    )


def _finish(
    config: ClassifyConfig,
    mosaic: Mosaic,
    test: Mnist,
    outputs: list[runners.Output],
    runner: runners.Runner,
    **fields: Any,
) -> Classification:
    """The Classification of a run's repeats (`outputs`, one (pred, confidence, cpu_s) each,
    whose predictions must agree), written to `config.out` when set; `fields` are the rest of
    Classification's fields. Raises ClassifyError when two repeats predicted differently."""
    pred, confidence, _ = outputs[0]
    for other_pred, _, _ in outputs[1:]:
        if not np.array_equal(other_pred, pred):  # same kernels, same inputs: must not happen
            raise ClassifyError("predictions differ between repeats of the same run")
    result = Classification(
        config=config,
        mosaic=mosaic,
        images=test.images,
        label=test.labels[mosaic.index],
        pred=pred,
        confidence=confidence,
        cpu_s=[cpu_s for _, _, cpu_s in outputs],
        threads=runner.threads,
        processes=runner.processes,
        **fields,
    )
    if config.out is not None:
        write_outputs(result, config.out)
    return result


def _run_ranks(config: ClassifyConfig, progress: bool) -> Classification | None:
    """ranks mode: `config.ranks` ranks (started by cnnpar.ranks, or by srun) classify their
    shards; rank 0 writes. None on the other ranks of an srun step."""
    from functools import partial

    from cnnpar import ranks

    # A bad weights file fails here, before any rank starts; weights saved under other names
    # say so once.
    _, weights_note = load_weights(config.weights, "cpu")
    if weights_note:
        print(f"cnnpar: note: {weights_note}", file=sys.stderr)
    if ranks.slurm_step_tasks() > 1:  # each task has its own allocation
        load = limits.oversubscription(processes=1, threads_per_process=config.threads)
    else:
        load = limits.oversubscription(processes=config.ranks, threads_per_process=config.threads)
    region = partial(
        TimedRegion,
        threads=config.ranks * config.threads,
        device="cpu",
        limits=config.limits,
        lock=config.timing_lock,
    )
    return ranks.run(
        _classify_rank,
        (config, progress, load, weights_note),
        ranks=config.ranks,
        threads=config.threads,
        timeout_s=config.rank_timeout,
        region=region,
    )


def _classify_rank(
    ctx: Any, config: ClassifyConfig, progress: bool, load: dict, weights_note: str | None
) -> Any:
    """One rank of a ranks-mode run: start up, classify its shard `repeats` times, and on rank 0
    assemble and write the usual outputs.

    `startup_s` runs from this rank's process start (interpreter, torch import, rendezvous: what
    spawning a worker costs in processes mode) until every rank has warmed up."""
    import psutil
    import torch.distributed as dist

    started = psutil.Process().create_time()  # wall-clock seconds since the epoch
    malloc = tune_malloc() if config.tune_malloc else allocator()
    test = load_mnist("test", config.data_source, config.mirrors)
    mosaic = make_mosaic(config.rows, config.cols, config.seed)
    runner = runners.RanksRunner(config, mosaic, test.images)
    dist.barrier()  # start-up ends when every rank is ready
    startup_s = time.time() - started
    outputs: list[runners.Output] = []
    measurement = measure(
        lambda: outputs.append(runner.classify(progress)), repeats=config.repeats, warmup=0
    )
    interference = ctx.end_timed()
    per_rank = ctx.gather_ranks()
    totals: list | None = [None] * ctx.world_size if ctx.rank == 0 else None
    dist.gather_object(
        {
            "cells": runner.stop - runner.start,
            "compute_s": runner.compute_s,
            "comm_s": runner.comm_s,
        },
        totals,
        dst=0,
    )
    if ctx.rank != 0:
        return None
    for info, total in zip(per_rank, totals, strict=True):
        info.update(total)
    compute, comm = sum(runner.compute_s), sum(runner.comm_s)
    return _finish(
        config,
        mosaic,
        test,
        outputs,
        runner,
        startup_s=startup_s,
        measurement=measurement,
        malloc=malloc,
        interference=interference,
        load=load,
        weights_note=weights_note,
        machine_cpus=ctx.placement.node_cpus,
        extra={
            "launcher": ctx.placement.launcher,
            "world_size": ctx.world_size,
            # rank 0's repeats: classifying vs gathering seconds (the rate counts both)
            "repeat_compute_s": list(runner.compute_s),
            "repeat_comm_s": list(runner.comm_s),
            "compute_s": compute,
            "comm_s": comm,
            "comm_share": comm / (compute + comm) if compute + comm > 0 else None,
            "ranks": per_rank,
        },
    )


def _cuda_sync() -> None:
    import torch

    torch.cuda.synchronize()
