"""Classify the cells of a mosaic with MosaicNet, in one of the modes of `registry.MODES`.

config → validate (before any work) → pin threads, tune malloc → load weights and digits →
start the mode's runner and warm it up (timed as ``startup_s``) → classify `repeats` times
(each timed as ``classify_s``, the runner kept alive) → write the run directory if asked.
With a time budget the repeats are passes over the mosaic in whole batches from cell 0 that
end when the budget's seconds of classification are spent (the last pass then partial) or
after `repeats` whole passes. One loop (`_classify`) serves one process and each
torch.distributed rank (ranks mode).
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path
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
from cnnpar.measure.timing import Measurement, measure, measure_budget
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
    """Load, start the mode's runner, classify `config.repeats` times (with `time_budget`: until
    that many seconds of classification, at most `repeats` whole passes); write `config.out` if
    set. Raises ClassifyError (or another CnnparError) for a request or a run that fails.

    None only on a rank other than 0 of a ranks-mode run that srun started (rank 0 reports)."""
    validate(config)
    config = _choose_backend(config)
    mode = MODES[config.mode]
    if not mode.ranks:
        load = limits.oversubscription(
            processes=max(1, config.processes),
            threads_per_process=mode.host_threads(config.workers),
        )
        return _classify(None, config, progress, load)
    from cnnpar import ranks

    # A bad weights file fails here, before any rank starts; weights saved under other names
    # say so once.
    weights_note = _weights_note(config.weights, "cpu")
    region = partial(
        TimedRegion,
        threads=config.ranks * config.threads,
        device="cpu",
        limits=config.limits,
        lock=config.timing_lock,
    )
    return ranks.run(
        _classify_rank,
        (config, progress, ranks.oversubscription(config.ranks, config.threads), weights_note),
        ranks=config.ranks,
        threads=config.threads,
        timeout_s=config.rank_timeout,
        region=region,
    )


def _choose_backend(config: ClassifyConfig) -> ClassifyConfig:
    """`config` with what backend "auto" stands for on the CPU decided (before any worker or
    rank starts, so all run the same one), from a per-machine measurement."""
    if config.backend != "auto" or config.device != "cpu" or config.chosen_backend:
        return config
    from cnnpar.classify.backends import choose_cpu_backend
    from cnnpar.measure.machine import this_machine
    from cnnpar.ranks import slurm_step_tasks

    machine = this_machine(config.machine_label)
    batch = min(config.batch_size, config.rows * config.cols)  # no batch is larger
    # Tasks srun started are ranks already: rank 0 may hold the timing lock while another
    # rank decides, so these measure (if their machine has no choice yet) without it.
    srun_rank = MODES[config.mode].ranks and slurm_step_tasks() > 1
    chosen, why = choose_cpu_backend(
        batch,
        f"{machine.cpu_model} ({machine.cpus} CPUs)",
        None if srun_rank else config.timing_lock,
    )
    return replace(config, chosen_backend=chosen, backend_choice=why)


def _classify_rank(
    ctx: Any, config: ClassifyConfig, progress: bool, load: dict, weights_note: str | None
) -> Classification | None:
    """One rank of a ranks-mode run: classify its shard; rank 0 assembles and writes."""
    return _classify(ctx, config, progress, load, weights_note)


def _classify(
    ctx: Any,
    config: ClassifyConfig,
    progress: bool,
    load: dict,
    weights_note: str | None = None,
) -> Classification | None:
    """The one run loop: start the mode's runner (timed as `startup_s`), classify `repeats`
    times or for the time budget (`_timed_repeats`), and assemble (and write) the
    Classification; None on ranks other than 0.

    `ctx` is None in a process of its own, which holds the timed region (lock, probes at the
    run's own parallelism, other processes' CPU share) over start-up and every repeat:
    start-up is part of what a user pays. Otherwise `ctx` is a rank's context, whoever started
    the ranks holding the region, and start-up runs from this rank's process start
    (interpreter, torch import, rendezvous: what spawning a worker costs in processes mode)
    until every rank has warmed up; rank 0 loaded the weights before (`weights_note`)."""
    mode = MODES[config.mode]
    region: Any = contextlib.nullcontext()
    if ctx is None:
        region = TimedRegion(
            threads=config.workers if mode.parallel else 1,
            device=mode.device,
            limits=config.limits,
            lock=config.timing_lock,
        )
    with region:
        if ctx is None:
            t0 = time.perf_counter()
            # Thread counts first: torch sizes its OpenMP pool at the first parallel op.
            set_threads(mode.host_threads(config.workers))
        else:  # this rank's process start, on perf_counter's clock
            import psutil

            t0 = time.perf_counter() - (time.time() - psutil.Process().create_time())
        malloc = tune_malloc() if config.tune_malloc else allocator()
        if ctx is None:  # a bad weights file fails before real work
            weights_note = _weights_note(config.weights, config.device)
        test = load_mnist("test", config.data_source, config.mirrors)
        mosaic = make_mosaic(config.rows, config.cols, config.seed)
        runner: runners.Runner = getattr(runners, mode.runner)(config, mosaic, test.images)
        if ctx is not None:
            import torch.distributed as dist

            dist.barrier()  # start-up ends when every rank is ready
        startup_s = time.perf_counter() - t0
        try:
            sync = _cuda_sync if mode.device == "cuda" else None
            measurement, outputs = _timed_repeats(runner, config, progress, sync)
        finally:
            runner.close()
    fields: dict[str, Any] = {}
    if ctx is None:
        interference = region.result
    else:
        interference = ctx.end_timed()
        own: dict[str, Any] = {
            # its shard (with a budget: what it classified in the first repeat)
            "cells": runner.repeat_cells[0],
            "compute_s": runner.compute_s,
            "comm_s": runner.comm_s,
        }
        if config.time_budget is not None:
            own["repeat_cells"] = list(runner.repeat_cells)
        per_rank = ctx.gather_ranks(own)
        if ctx.rank != 0:
            return None
        compute, comm = sum(runner.compute_s), sum(runner.comm_s)
        fields = {
            "machine_cpus": ctx.placement.node_cpus,
            "extra": {
                "launcher": ctx.placement.launcher,
                "world_size": ctx.world_size,
                # rank 0's repeats: classifying vs communicating seconds (gathering, and with a
                # budget agreeing to go on); the rate counts both
                "repeat_compute_s": list(runner.compute_s),
                "repeat_comm_s": list(runner.comm_s),
                "compute_s": compute,
                "comm_s": comm,
                "comm_share": comm / (compute + comm) if compute + comm > 0 else None,
                "ranks": per_rank,
            },
        }
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
        **fields,
    )


def _timed_repeats(
    runner: runners.Runner,
    config: ClassifyConfig,
    progress: bool = False,
    sync: Callable[[], None] | None = None,
) -> tuple[Measurement, list[runners.Output]]:
    """Time the runner's repeats: `config.repeats` whole passes, or with `time_budget` passes
    from cell 0 until that many seconds of classification (the runner told when they run out,
    ranks agreeing through `runner.agree`), at most `repeats` of them. Returns the measurement
    (seconds per repeat) and each repeat's output, whose cells are [0, n)."""
    outputs: list[runners.Output] = []
    if config.time_budget is None:
        measurement = measure(
            lambda: outputs.append(runner.classify(progress)),
            repeats=config.repeats,
            warmup=0,  # the runner warmed up inside startup_s
            sync=sync,
        )
    else:
        measurement = measure_budget(
            lambda deadline: outputs.append(runner.classify(progress, deadline)),
            config.time_budget,
            max_repeats=config.repeats,
            sync=sync,
            agree=getattr(runner, "agree", None),
        )
    return measurement, outputs


def _weights_note(weights: Path, device: str) -> str | None:
    """Load `weights` (a bad file fails here, one line); print and return the note on how
    weights saved under other names were mapped, if any."""
    _, note = load_weights(weights, device)
    if note:
        print(f"cnnpar: note: {note}", file=sys.stderr)
    return note


def _finish(
    config: ClassifyConfig,
    mosaic: Mosaic,
    test: Mnist,
    outputs: list[runners.Output],
    runner: runners.Runner,
    **fields: Any,
) -> Classification:
    """The Classification of a run's repeats (`outputs`, one (pred, confidence, cpu_s) each
    over cells [0, n), whose predictions must agree where they overlap), written to
    `config.out` when set; `fields` are the rest of Classification's fields. Raises
    ClassifyError when two repeats predicted a cell differently."""
    # The first repeat classified the most: a later one starts only after a whole pass.
    pred, confidence, _ = outputs[0]
    for other_pred, _, _ in outputs[1:]:
        # same kernels, same inputs: must not happen
        if not np.array_equal(other_pred, pred[: len(other_pred)]):
            raise ClassifyError("predictions differ between repeats of the same run")
    result = Classification(
        config=config,
        mosaic=mosaic,
        images=test.images,
        label=test.labels[mosaic.index[: len(pred)]],
        pred=pred,
        confidence=confidence,
        cpu_s=[cpu_s for _, _, cpu_s in outputs],
        repeat_cells=[len(p) for p, _, _ in outputs],
        threads=runner.threads,
        processes=runner.processes,
        **fields,
    )
    if config.out is not None:
        write_outputs(result, config.out)
    return result


def _cuda_sync() -> None:
    import torch

    torch.cuda.synchronize()
