"""Classify every cell of a mosaic with MosaicNet, in one of the modes of `registry.MODES`.

config → validate (before any work) → pin threads, tune malloc → load weights and digits →
start the mode's runner and warm it up (timed as ``startup_s``) → classify `repeats` times
(each timed as ``classify_s``, the runner kept alive) → write the run directory if asked.
"""

from __future__ import annotations

import sys
import time

import numpy as np

from cnnpar import limits
from cnnpar.classify import runners
from cnnpar.classify.config import ClassifyConfig, ClassifyError, validate
from cnnpar.classify.outputs import Classification, summary_lines, write_outputs
from cnnpar.classify.runners import chunk_bounds, classify_range
from cnnpar.data import load_mnist
from cnnpar.measure.environment import allocator, tune_malloc
from cnnpar.measure.interference import TimedRegion
from cnnpar.measure.threads import set_threads
from cnnpar.measure.timing import measure
from cnnpar.mosaic import make_mosaic
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


def run(config: ClassifyConfig, progress: bool = False) -> Classification:
    """Load, start the mode's runner, classify `config.repeats` times; write `config.out` if set."""
    validate(config)
    mode = MODES[config.mode]
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
        startup_s=startup_s,
        measurement=measurement,
        cpu_s=[cpu_s for _, _, cpu_s in outputs],
        threads=runner.threads,
        processes=runner.processes,
        malloc=malloc,
        interference=region.result,
        load=load,
        weights_note=weights_note,
    )
    if config.out is not None:
        write_outputs(result, config.out)
    return result


def _cuda_sync() -> None:
    import torch

    torch.cuda.synchronize()
