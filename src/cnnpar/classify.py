"""Classify every cell of a mosaic with MosaicNet, in one of four execution modes.

- ``sequential``: this process, one torch thread, batches of B (B=1 is the original per-image loop).
- ``threads``: this process, N torch intra-op threads.
- ``processes``: N spawned worker processes with one torch thread each. A worker pins its thread
  count before any torch op, then loads the weights and the test digits once (pool initializer);
  the mosaic's index array travels once per worker, never pixels. Work is N×4 contiguous chunks of
  whole batches, and each chunk comes back as two compact arrays (pred uint8, confidence float32).
- ``cuda``: batches on the GPU, with digits and index uploaded once.

Every mode cuts the cells into the same batches (cell 0, B, 2B, ...), so for a given batch size and
backend the modes run identical kernels on identical inputs. Start-up (loading data and weights,
starting the pool, warm-up batches) is timed as ``startup_s``, apart from ``classify_s``, which
`timing.measure` repeats with the pool kept alive.
"""

from __future__ import annotations

import concurrent.futures as cf
import copy
import ctypes
import multiprocessing as mp
import os
import platform
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cnnpar import io, timing
from cnnpar.data import load_mnist
from cnnpar.errors import CnnparError
from cnnpar.mosaic import Mosaic, check_geometry, make_mosaic, render_mask, write_png
from cnnpar.nets.mosaicnet import MosaicNet, load_mosaicnet, to_input

MODES = ("sequential", "threads", "processes", "cuda")
# How the network runs. "auto" is mkldnn on CPU and eager on CUDA.
BACKENDS = ("auto", "eager", "channels-last", "mkldnn", "jit")
CPU_ONLY_BACKENDS = ("mkldnn", "jit")
CHUNKS_PER_WORKER = 4  # a few chunks each so a slow worker does not hold up the end
# Test hook: seconds of extra sleep inside engine start-up (each worker, in processes mode), used
# to check that start-up never leaks into classify_s.
STARTUP_DELAY_ENV = "CNNPAR_CLASSIFY_STARTUP_DELAY_S"
WORKER_READY_TIMEOUT_S = 600.0


class ClassifyError(CnnparError):
    """A classification request that cannot run as asked."""


@dataclass(frozen=True)
class ClassifyConfig:
    weights: Path
    rows: int
    cols: int
    mode: str = "sequential"
    workers: int = 1
    batch_size: int = 256
    seed: int = 0
    repeats: int = 1
    backend: str = "auto"
    data_source: str = "bundled"
    tune_malloc: bool = True

    @property
    def device(self) -> str:
        return "cuda" if self.mode == "cuda" else "cpu"

    @property
    def resolved_backend(self) -> str:
        if self.backend != "auto":
            return self.backend
        return "eager" if self.mode == "cuda" else "mkldnn"


def validate(config: ClassifyConfig) -> None:
    """Raise ClassifyError for any request we can reject before touching data or weights."""
    if config.mode not in MODES:
        raise ClassifyError(f"unknown mode {config.mode!r}; choose one of {', '.join(MODES)}")
    if config.backend not in BACKENDS:
        raise ClassifyError(
            f"unknown backend {config.backend!r}; choose one of {', '.join(BACKENDS)}"
        )
    check_geometry(config.rows, config.cols)
    for name in ("workers", "batch_size", "repeats"):
        value = getattr(config, name)
        if value < 1:
            raise ClassifyError(f"{name.replace('_', '-')} must be >= 1 (got {value})")
    if config.mode in ("sequential", "cuda") and config.workers != 1:
        raise ClassifyError(
            f"{config.mode} mode runs one worker (got --workers {config.workers}); "
            "use --workers 1, or --mode threads|processes to run several"
        )
    if config.mode == "cuda":
        if config.resolved_backend in CPU_ONLY_BACKENDS:
            raise ClassifyError(
                f"backend {config.backend} runs on the CPU only; use --backend eager "
                "or channels-last with --mode cuda"
            )
        if not torch.cuda.is_available():
            raise ClassifyError(
                "cuda mode needs a CUDA GPU, and torch sees none "
                "(torch.cuda.is_available() is False); use --mode sequential|threads|processes"
            )


# --- the network, prepared for inference ----------------------------------------------------


class _MkldnnMosaicNet(nn.Module):
    """The conv stack in oneDNN's blocked layout, weights reordered once at load time.

    Activations stay blocked through conv → ReLU → pool → conv → ReLU → pool, so the per-batch
    layout reorders of the eager path disappear; the FC layers run on the dense result. The
    eager CPU path calls the same oneDNN convolution, so the logits are bit-identical to eager.
    """

    def __init__(self, model: MosaicNet) -> None:
        super().__init__()
        with warnings.catch_warnings():
            # torch.utils.mkldnn's modules are TorchScript-decorated: FutureWarning noise.
            warnings.simplefilter("ignore", FutureWarning)
            from torch.utils import mkldnn as torch_mkldnn

            self.features = torch_mkldnn.to_mkldnn(copy.deepcopy(model.features))
        self.classifier = model.classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x.to_mkldnn()).to_dense())


class _ChannelsLast(nn.Module):
    def __init__(self, model: MosaicNet) -> None:
        super().__init__()
        self.model = model.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.contiguous(memory_format=torch.channels_last))


def prepare(model: MosaicNet, backend: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """Wrap an eval-mode MosaicNet for one backend; the result maps x (B,1,28,28) → logits."""
    if backend == "eager":
        return model
    if backend == "channels-last":
        return _ChannelsLast(model)
    if backend == "mkldnn":
        return _MkldnnMosaicNet(model)
    if backend == "jit":
        # Freezing folds the weights into the graph as constants and optimize_for_inference
        # swaps in prepacked oneDNN convolutions. TorchScript is deprecated in favour of
        # torch.compile, which here took ~30 s to compile and ran slower (see bench_classify).
        with warnings.catch_warnings(), torch.inference_mode():
            warnings.simplefilter("ignore", FutureWarning)
            return torch.jit.optimize_for_inference(torch.jit.script(model))
    raise ClassifyError(f"unknown backend {backend!r}")


def tune_malloc() -> str:
    """Keep freed torch buffers in glibc's heap instead of unmapping them after every batch.

    glibc serves big blocks with mmap and returns them on free, so each batch re-faults its
    activation buffers (measured here: sequential B=256 at 6.5k cells/s, 10k with this).
    Returns a label for the result rows.
    """
    if platform.libc_ver()[0] != "glibc":
        return "default"
    libc = ctypes.CDLL("libc.so.6")
    m_trim_threshold, m_mmap_threshold = -1, -3
    ok = libc.mallopt(m_mmap_threshold, 1 << 30) == 1 and libc.mallopt(m_trim_threshold, 1 << 30)
    return "glibc-tuned" if ok else "glibc"


def classify_range(
    net: Callable[[torch.Tensor], torch.Tensor],
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


def _warm_up(net: Callable[[torch.Tensor], torch.Tensor], batch_size: int, device: str) -> None:
    """Run a few batches so oneDNN primitives, TorchScript profiling and the allocator are
    settled before the clock starts (TorchScript specialises on the second or third call)."""
    x = torch.zeros(batch_size, 1, 28, 28, device=device)
    with torch.inference_mode():
        for _ in range(3):
            net(x)


def _startup_delay() -> float:
    return float(os.environ.get(STARTUP_DELAY_ENV, "0") or 0)


# --- runners: one per execution mode --------------------------------------------------------


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


class _InProcessRunner:
    """sequential and threads modes: the loop runs here, on this process's torch threads."""

    def __init__(self, net: Callable, images: np.ndarray, mosaic: Mosaic, batch_size: int) -> None:
        self.net, self.images, self.mosaic, self.batch_size = net, images, mosaic, batch_size
        _warm_up(net, batch_size, "cpu")
        time.sleep(_startup_delay())
        self.threads = timing.effective_threads()
        self.processes = 1

    def classify(self, progress: bool) -> tuple[np.ndarray, np.ndarray, float]:
        cpu0 = time.process_time()  # every thread of this process
        with _Progress(progress, self.mosaic.cells) as on_batch:
            pred, confidence = classify_range(
                self.net, self.images, self.mosaic, self.batch_size, 0, self.mosaic.cells, on_batch
            )
        return pred, confidence, time.process_time() - cpu0

    def close(self) -> None:
        pass


# Per-worker state, set once by _init_worker in each pool process.
_WORKER: dict[str, Any] = {}


def _init_worker(
    weights: str,
    backend: str,
    batch_size: int,
    mosaic: Mosaic,
    data_source: str,
    malloc: bool,
    delay_s: float,
    barrier: threading.Barrier,
) -> None:
    # One torch thread BEFORE any torch op: N processes × 1 thread fill N cores without
    # oversubscription, and OpenMP's pool is created at that size.
    timing.set_threads(1)
    if malloc:
        tune_malloc()
    net = prepare(load_mosaicnet(weights, "cpu"), backend)
    _warm_up(net, batch_size, "cpu")
    time.sleep(delay_s)
    _WORKER.update(
        net=net,
        images=load_mnist("test", data_source).images,
        mosaic=mosaic,
        batch_size=batch_size,
        barrier=barrier,
    )


def _worker_ready(_: int) -> dict[str, Any]:
    """Blocks until every worker holds one of these tasks, so each worker runs exactly one."""
    _WORKER["barrier"].wait(timeout=WORKER_READY_TIMEOUT_S)
    return {"pid": os.getpid(), **timing.effective_threads()}


def _worker_chunk(start: int, stop: int) -> tuple[int, np.ndarray, np.ndarray, float]:
    cpu0 = time.process_time()
    pred, confidence = classify_range(
        _WORKER["net"], _WORKER["images"], _WORKER["mosaic"], _WORKER["batch_size"], start, stop
    )
    return start, pred, confidence, time.process_time() - cpu0


def chunk_bounds(cells: int, batch_size: int, chunks: int) -> list[tuple[int, int]]:
    """Split [0, cells) into at most `chunks` contiguous ranges of whole batches."""
    n_batches = -(-cells // batch_size)
    splits = np.array_split(np.arange(n_batches), min(chunks, n_batches))
    return [(int(s[0]) * batch_size, min(int(s[-1] + 1) * batch_size, cells)) for s in splits]


class _ProcessRunner:
    """processes mode: a spawned pool, started and warmed before the clock starts."""

    def __init__(self, config: ClassifyConfig, mosaic: Mosaic, backend: str) -> None:
        # spawn, not fork: a forked child of a process that already ran torch ops can deadlock
        # in OpenMP, and spawn gives every worker a clean interpreter on every platform.
        ctx = mp.get_context("spawn")
        barrier = ctx.Barrier(config.workers)
        self.pool = cf.ProcessPoolExecutor(
            max_workers=config.workers,
            mp_context=ctx,
            initializer=_init_worker,
            initargs=(
                str(config.weights),
                backend,
                config.batch_size,
                mosaic,  # its index array is pickled once per worker; pixels never travel
                config.data_source,
                config.tune_malloc,
                _startup_delay(),
                barrier,
            ),
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

    def classify(self, progress: bool) -> tuple[np.ndarray, np.ndarray, float]:
        pred = np.empty(self.mosaic.cells, dtype=np.uint8)
        confidence = np.empty(self.mosaic.cells, dtype=np.float32)
        cpu_s = 0.0  # summed over the workers' chunks
        futures = [self.pool.submit(_worker_chunk, lo, hi) for lo, hi in self.bounds]
        with _Progress(progress, self.mosaic.cells) as on_batch:
            for future in cf.as_completed(futures):
                start, chunk_pred, chunk_conf, chunk_cpu_s = future.result()
                cpu_s += chunk_cpu_s
                pred[start : start + len(chunk_pred)] = chunk_pred
                confidence[start : start + len(chunk_conf)] = chunk_conf
                if on_batch is not None:
                    on_batch(len(chunk_pred))
        return pred, confidence, cpu_s

    def close(self) -> None:
        self.pool.shutdown(wait=True)


class _CudaRunner:
    """cuda mode: digits and index live on the GPU; batches are gathered there."""

    def __init__(self, net: Callable, images: np.ndarray, mosaic: Mosaic, batch_size: int) -> None:
        self.net, self.batch_size, self.cells = net, batch_size, mosaic.cells
        self.images = torch.from_numpy(images).to("cuda")  # (10000, 28, 28) uint8, 7.8 MB
        self.index = torch.from_numpy(mosaic.index).to("cuda")  # (cells,) int64
        _warm_up(net, batch_size, "cuda")
        torch.cuda.synchronize()
        time.sleep(_startup_delay())
        self.threads = timing.effective_threads()
        self.processes = 1

    def classify(self, progress: bool) -> tuple[np.ndarray, np.ndarray, float]:
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


# --- the run --------------------------------------------------------------------------------


@dataclass
class Classification:
    config: ClassifyConfig
    mosaic: Mosaic
    images: np.ndarray  # (10000, 28, 28) uint8 test digits, for the mask
    label: np.ndarray  # (cells,) uint8 true test label per cell
    pred: np.ndarray  # (cells,) uint8
    confidence: np.ndarray  # (cells,) float32 softmax max
    startup_s: float
    measurement: timing.Measurement
    cpu_s: list[float]  # CPU seconds per repeat, summed over classifying processes
    threads: dict[str, int | None]  # effective counts inside one classifying process
    processes: int
    malloc: str
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def accuracy(self) -> float:
        return float(np.mean(self.pred == self.label))

    def result_rows(self) -> list[dict[str, Any]]:
        """One row per timed repeat: the contract columns, then the context."""
        c, m = self.config, self.measurement
        rows = []
        for repeat, (classify_s, cpu_s) in enumerate(zip(m.samples, self.cpu_s, strict=True), 1):
            rows.append(
                {
                    "mode": c.mode,
                    "workers": c.workers,
                    "batch_size": c.batch_size,
                    "rows": c.rows,
                    "cols": c.cols,
                    "cells": self.mosaic.cells,
                    "distinct_digits": self.mosaic.distinct_digits,
                    "startup_s": self.startup_s,
                    "classify_s": classify_s,
                    "total_s": self.startup_s + classify_s,
                    "cells_per_s": self.mosaic.cells / classify_s,
                    "accuracy": self.accuracy,
                    # CPU time is what co-tenants on a shared machine cannot inflate much.
                    "classify_cpu_s": cpu_s,
                    "processes": self.processes,
                    **self.threads,
                    "backend": c.resolved_backend,
                    "device": c.device,
                    "malloc": self.malloc,
                    "with_replacement": self.mosaic.with_replacement,
                    "seed": c.seed,
                    "repeat": repeat,
                    "repeats": len(m.samples),
                    "classify_median_s": m.median,
                    "classify_iqr_s": m.iqr,
                }
            )
        return rows


def run(config: ClassifyConfig, progress: bool = False) -> Classification:
    """Load, start the engine, classify `config.repeats` times; nothing is written."""
    validate(config)
    backend = config.resolved_backend
    t0 = time.perf_counter()
    # Thread counts first: torch sizes its OpenMP pool at the first parallel op.
    timing.set_threads(config.workers if config.mode == "threads" else 1)
    malloc = tune_malloc() if config.tune_malloc else "glibc"
    model = load_mosaicnet(config.weights, config.device)  # WeightsError before any real work
    test = load_mnist("test", config.data_source)
    mosaic = make_mosaic(config.rows, config.cols, config.seed)
    label = test.labels[mosaic.index]

    runner: _InProcessRunner | _ProcessRunner | _CudaRunner
    if config.mode == "processes":
        del model  # the parent only validated the file; each worker loads its own copy
        runner = _ProcessRunner(config, mosaic, backend)
    elif config.mode == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # keep float32 numerics, as on the CPU
        torch.backends.cudnn.allow_tf32 = False
        runner = _CudaRunner(prepare(model, backend), test.images, mosaic, config.batch_size)
    else:
        runner = _InProcessRunner(prepare(model, backend), test.images, mosaic, config.batch_size)
    startup_s = time.perf_counter() - t0

    outputs: list[tuple[np.ndarray, np.ndarray, float]] = []
    try:
        measurement = timing.measure(
            lambda: outputs.append(runner.classify(progress)),
            repeats=config.repeats,
            warmup=0,  # the engines warmed up inside startup_s
            sync=torch.cuda.synchronize if config.mode == "cuda" else None,
        )
    finally:
        runner.close()
    pred, confidence, _ = outputs[0]
    for other_pred, _, _ in outputs[1:]:
        if not np.array_equal(other_pred, pred):  # same kernels, same inputs: must not happen
            raise ClassifyError("predictions differ between repeats of the same run")
    return Classification(
        config=config,
        mosaic=mosaic,
        images=test.images,
        label=label,
        pred=pred,
        confidence=confidence,
        startup_s=startup_s,
        measurement=measurement,
        cpu_s=[cpu_s for _, _, cpu_s in outputs],
        threads=runner.threads,
        processes=runner.processes,
        malloc=malloc,
    )


def write_outputs(result: Classification, out: str | os.PathLike[str]) -> dict[str, Path]:
    """predictions.npz, result.csv, mask.png and run.json in `out`, each written atomically."""
    out = Path(out)
    paths = {name: out / name for name in ("predictions.npz", "result.csv", "mask.png", "run.json")}
    io.write_npz(
        paths["predictions.npz"],
        index=result.mosaic.index,
        label=result.label,
        pred=result.pred,
        confidence=result.confidence,
    )
    rows = result.result_rows()
    io.write_csv(paths["result.csv"], rows)
    mask = render_mask(result.mosaic, result.images, result.pred == result.label, result.confidence)
    write_png(paths["mask.png"], mask)
    config = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(result.config).items()}
    io.write_json(
        paths["run.json"],
        {
            "command": "classify",
            "config": config,
            "backend": result.config.resolved_backend,
            "threads": result.threads,
            "processes": result.processes,
            "malloc": result.malloc,
            "cells": result.mosaic.cells,
            "distinct_digits": result.mosaic.distinct_digits,
            "with_replacement": result.mosaic.with_replacement,
            "accuracy": result.accuracy,
            "startup_s": result.startup_s,
            "classify": result.measurement.summary(),
            "mask_shape": list(mask.shape),
            "environment": timing.environment().as_dict(),
        },
    )
    return paths


def summary_lines(result: Classification) -> Iterator[str]:
    """The original study's printout (mode, workers, items, runtime, accuracy) plus throughput."""
    c, m, mosaic = result.config, result.measurement, result.mosaic
    threads = result.threads.get("torch_threads")
    yield (
        f"mode: {c.mode} ({c.workers} worker{'s' if c.workers > 1 else ''}, "
        f"{result.processes} process{'es' if result.processes > 1 else ''} × "
        f"{threads} torch thread{'s' if threads != 1 else ''}, backend {c.resolved_backend}, "
        f"batch size {c.batch_size})"
    )
    yield f"workers: {c.workers}"
    source = (
        f"sampled with replacement from the test digits, {mosaic.distinct_digits:,} distinct"
        if mosaic.with_replacement
        else f"{mosaic.distinct_digits:,} distinct test digits"
    )
    yield f"total items classified: {mosaic.cells:,} ({c.rows}x{c.cols} mosaic, {source})"
    spread = f" (median of {len(m.samples)}, IQR {m.iqr:.3f} s)" if len(m.samples) > 1 else ""
    yield (
        f"total runtime: {result.startup_s + m.median:.3f} s = start-up {result.startup_s:.3f} s "
        f"+ classify {m.median:.3f} s{spread}"
    )
    yield f"accuracy: {100 * result.accuracy:.2f}% on test digits"
    yield f"throughput: {mosaic.cells / m.median:,.0f} cells/s"
