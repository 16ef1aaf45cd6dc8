"""One runner per classify mode, all of one shape: `Runner(config, mosaic, images)` starts and
warms the engine (timed as start-up), `classify(progress)` labels every cell once (timed), and
`close()` releases it. `registry.MODES` names which runner a mode uses.

Every runner cuts the cells into the same batches (cell 0, B, 2B, ...), so for a given batch size
and backend the modes run identical kernels on identical inputs.

- `InProcessRunner` (sequential, threads): this process's torch threads.
- `ProcessRunner` (processes): N spawned workers with one torch thread each. A worker pins its
  thread count before any torch op, then loads the weights and the test digits once and rebuilds
  the mosaic from its rows, cols and seed: only the small config crosses the start-up pipe.
  Work is N×4 contiguous chunks of whole batches, and each chunk comes back as two compact
  arrays (pred uint8, confidence float32).
- `CudaRunner` (cuda): batches gathered on the GPU, with digits and index uploaded once.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from cnnpar.classify.backends import Net, prepare, warm_up
from cnnpar.classify.config import ClassifyConfig, ClassifyError
from cnnpar.data import load_mnist
from cnnpar.measure.environment import tune_malloc
from cnnpar.measure.threads import effective_threads, set_threads
from cnnpar.mosaic import Mosaic, make_mosaic
from cnnpar.nets.mosaicnet import load_mosaicnet
from cnnpar.nets.torch_step import to_input

CHUNKS_PER_WORKER = 4  # a few chunks each so a slow worker does not hold up the end
WORKER_READY_TIMEOUT_S = 600.0

Output = tuple[np.ndarray, np.ndarray, float]  # pred, confidence, CPU seconds


class Runner(Protocol):
    threads: dict[str, int | None]  # effective counts inside one classifying process
    processes: int

    def __init__(self, config: ClassifyConfig, mosaic: Mosaic, images: np.ndarray) -> None: ...

    def classify(self, progress: bool) -> Output: ...

    def close(self) -> None: ...


def classify_range(
    net: Net,
    images: np.ndarray,
    mosaic: Mosaic,
    batch_size: int,
    start: int,
    stop: int,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """pred (stop-start,) uint8 and confidence (stop-start,) float32 for cells [start, stop).

    `start` must be a multiple of `batch_size`, so every caller sees the same batches.
    """
    pred = np.empty(stop - start, dtype=np.uint8)
    confidence = np.empty(stop - start, dtype=np.float32)
    with torch.inference_mode():
        for first, pixels in mosaic.batches(images, batch_size, start, stop):
            logits = net(to_input(torch.from_numpy(pixels)))  # (b, 10)
            lo, hi = first - start, first - start + len(pixels)
            # argmax of the logits, not of the softmax, where exp() can round two apart to a tie.
            pred[lo:hi] = logits.argmax(dim=1).numpy()
            confidence[lo:hi] = torch.softmax(logits, dim=1).amax(dim=1).numpy()
            if on_batch is not None:
                on_batch(len(pixels))
    return pred, confidence


@dataclass
class _Progress:
    """A tqdm bar over cells, or nothing."""

    enabled: bool
    total: int
    bar: Any = None

    def __enter__(self) -> Callable[[int], None] | None:
        if not self.enabled:
            return None
        from tqdm import tqdm

        self.bar = tqdm(total=self.total, unit="cell", unit_scale=True, leave=False)
        return self.bar.update

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()


class InProcessRunner:
    """sequential and threads modes: the loop runs here, on this process's torch threads."""

    def __init__(self, config: ClassifyConfig, mosaic: Mosaic, images: np.ndarray) -> None:
        self.net = prepare(load_mosaicnet(config.weights, "cpu"), config.resolved_backend)
        self.images, self.mosaic, self.batch_size = images, mosaic, config.batch_size
        warm_up(self.net, self.batch_size, "cpu")
        self.threads = effective_threads()
        self.processes = 1

    def classify(self, progress: bool) -> Output:
        cpu0 = time.process_time()  # every thread of this process
        with _Progress(progress, self.mosaic.cells) as on_batch:
            pred, confidence = classify_range(
                self.net, self.images, self.mosaic, self.batch_size, 0, self.mosaic.cells, on_batch
            )
        return pred, confidence, time.process_time() - cpu0

    def close(self) -> None:
        pass


@dataclass
class _WorkerState:
    net: Net
    images: np.ndarray
    mosaic: Mosaic
    batch_size: int
    barrier: threading.Barrier


# Set once in each pool process by _init_worker: a pool's tasks can reach only module state.
_worker: _WorkerState | None = None


def _init_worker(
    config: ClassifyConfig, barrier: threading.Barrier
) -> None:  # pragma: no cover - runs in the spawned workers
    global _worker
    # One torch thread BEFORE any torch op: N processes × 1 thread fill N cores without
    # oversubscription, and OpenMP's pool is created at that size.
    set_threads(1)
    if config.tune_malloc:
        tune_malloc()
    net = prepare(load_mosaicnet(config.weights, "cpu"), config.resolved_backend)
    warm_up(net, config.batch_size, "cpu")
    images = load_mnist("test", config.data_source).images
    mosaic = make_mosaic(config.rows, config.cols, config.seed)  # the parent's, by its seed
    _worker = _WorkerState(net, images, mosaic, config.batch_size, barrier)


def _worker_ready(_: int) -> dict[str, Any]:  # pragma: no cover - runs in the workers
    """Blocks until every worker holds one of these tasks, so each worker runs exactly one."""
    assert _worker is not None
    _worker.barrier.wait(timeout=WORKER_READY_TIMEOUT_S)
    return {"pid": os.getpid(), **effective_threads()}


def _worker_chunk(start: int, stop: int) -> tuple[int, np.ndarray, np.ndarray, float]:
    assert _worker is not None  # pragma: no cover - runs in the workers
    cpu0 = time.process_time()
    w = _worker
    pred, confidence = classify_range(w.net, w.images, w.mosaic, w.batch_size, start, stop)
    return start, pred, confidence, time.process_time() - cpu0


def chunk_bounds(cells: int, batch_size: int, chunks: int) -> list[tuple[int, int]]:
    """Split [0, cells) into at most `chunks` contiguous ranges of whole batches."""
    n_batches = -(-cells // batch_size)
    splits = np.array_split(np.arange(n_batches), min(chunks, n_batches))
    return [(int(s[0]) * batch_size, min(int(s[-1] + 1) * batch_size, cells)) for s in splits]


class ProcessRunner:
    """processes mode: a spawned pool, started and warmed before the clock starts."""

    def __init__(self, config: ClassifyConfig, mosaic: Mosaic, images: np.ndarray) -> None:
        # spawn, not fork: a forked child of a process that already ran torch ops can deadlock
        # in OpenMP, and spawn gives every worker a clean interpreter on every platform.
        ctx = mp.get_context("spawn")
        barrier = ctx.Barrier(config.workers)
        self.pool = cf.ProcessPoolExecutor(
            max_workers=config.workers,
            mp_context=ctx,
            initializer=_init_worker,
            initargs=(config, barrier),
        )
        try:
            ready = list(self.pool.map(_worker_ready, range(config.workers)))
        except (cf.process.BrokenProcessPool, threading.BrokenBarrierError) as err:
            self.pool.shutdown(cancel_futures=True)
            raise ClassifyError(f"worker processes failed to start: {err}") from None
        self.processes = len({r["pid"] for r in ready})
        self.threads = {k: v for k, v in ready[0].items() if k != "pid"}
        self.mosaic = mosaic
        self.bounds = chunk_bounds(
            mosaic.cells, config.batch_size, config.workers * CHUNKS_PER_WORKER
        )

    def classify(self, progress: bool) -> Output:
        pred = np.empty(self.mosaic.cells, dtype=np.uint8)
        confidence = np.empty(self.mosaic.cells, dtype=np.float32)
        cpu_s = 0.0  # summed over the workers' chunks
        futures = [self.pool.submit(_worker_chunk, lo, hi) for lo, hi in self.bounds]
        with _Progress(progress, self.mosaic.cells) as on_batch:
            for future in cf.as_completed(futures):
                try:
                    start, chunk_pred, chunk_conf, chunk_cpu_s = future.result()
                except cf.process.BrokenProcessPool:
                    self.pool.shutdown(cancel_futures=True)
                    raise ClassifyError(
                        "a worker process died while classifying (killed, or out of memory?)"
                    ) from None
                cpu_s += chunk_cpu_s
                pred[start : start + len(chunk_pred)] = chunk_pred
                confidence[start : start + len(chunk_conf)] = chunk_conf
                if on_batch is not None:
                    on_batch(len(chunk_pred))
        return pred, confidence, cpu_s

    def close(self) -> None:
        self.pool.shutdown(wait=True)


class CudaRunner:
    """cuda mode: digits and index live on the GPU; batches are gathered there."""

    def __init__(self, config: ClassifyConfig, mosaic: Mosaic, images: np.ndarray) -> None:
        torch.backends.cuda.matmul.allow_tf32 = False  # keep float32 numerics, as on the CPU
        torch.backends.cudnn.allow_tf32 = False
        self.net = prepare(load_mosaicnet(config.weights, "cuda"), config.resolved_backend)
        self.batch_size, self.cells = config.batch_size, mosaic.cells
        self.images = torch.from_numpy(images).to("cuda")  # (10000, 28, 28) uint8, 7.8 MB
        self.index = torch.from_numpy(mosaic.index).to("cuda")  # (cells,) int64
        warm_up(self.net, self.batch_size, "cuda")
        torch.cuda.synchronize()
        self.threads = effective_threads()
        self.processes = 1

    def classify(self, progress: bool) -> Output:
        cpu0 = time.process_time()
        pred = torch.empty(self.cells, dtype=torch.uint8, device="cuda")
        confidence = torch.empty(self.cells, dtype=torch.float32, device="cuda")
        with torch.inference_mode(), _Progress(progress, self.cells) as on_batch:
            for first in range(0, self.cells, self.batch_size):
                last = min(first + self.batch_size, self.cells)
                logits = self.net(to_input(self.images[self.index[first:last]]))
                pred[first:last] = logits.argmax(dim=1)
                confidence[first:last] = torch.softmax(logits, dim=1).amax(dim=1)
                if on_batch is not None:
                    on_batch(last - first)
        pred_np, confidence_np = pred.cpu().numpy(), confidence.cpu().numpy()  # waits for the GPU
        return pred_np, confidence_np, time.process_time() - cpu0

    def close(self) -> None:
        pass
