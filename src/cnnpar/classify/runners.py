"""One runner per classify mode, all of one shape: `Runner(config, mosaic, images)` starts and
warms the engine (timed as start-up), `classify(progress, deadline)` labels the cells once
(timed), and `close()` releases it. `registry.MODES` names which runner a mode uses.

Every runner cuts the cells into the same batches (cell 0, B, 2B, ...), so for a given batch size
and backend the modes run identical kernels on identical inputs. Without a deadline a call
labels every cell; with one (a `time.perf_counter()` reading, the run's time budget) it starts
no batch after it, and labels the cells [0, n) of whole batches: at least one batch per worker
or rank, all of them if the mosaic ends first. Its arrays then hold those n cells.

- `InProcessRunner` (sequential, threads): this process's torch threads.
- `ProcessRunner` (processes): N spawned workers with one torch thread each. A worker pins its
  thread count before any torch op, then loads the weights and the test digits once and rebuilds
  the mosaic from its rows, cols and seed: only the small config crosses the start-up pipe.
  Work is N×4 contiguous chunks of whole batches (with a deadline: one batch each, so the run
  stops within a batch of it), handed out in order, one at a time over each worker's own pipe,
  and each chunk comes back as two compact arrays (pred uint8, confidence float32).
  A pipe per worker is what makes a dead worker visible at once, whenever it dies: its pipe
  reads as end-of-file, even in the middle of a message (a shared result queue, as in
  concurrent.futures, can hang forever on a message its writer died halfway through).
- `CudaRunner` (cuda): batches gathered on the GPU, with digits and index uploaded once.
- `RanksRunner` (ranks): runs inside each torch.distributed rank (cnnpar.ranks starts them):
  rank r classifies the r-th of N contiguous ranges of whole batches (possibly empty), and the
  predictions and confidences are gathered on rank 0 (`gather_object`). With a deadline, rank r
  classifies batches r, r+N, r+2N, ... in steps, and after each step the ranks agree whether to
  stop (one all-reduce), so together they always hold batches [0, steps × N).
"""

from __future__ import annotations

import collections
import contextlib
import multiprocessing as mp
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing import resource_tracker
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any, Protocol, cast

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
WORKER_STOP_TIMEOUT_S = 10.0  # for idle workers to exit after being told to; then they are killed
# cuda mode under a deadline: batches queued on the GPU ahead of the one the clock is read
# after, so the queue stays fed while the run stops within a few batches of the deadline.
CUDA_BATCHES_IN_FLIGHT = 2

# pred, confidence of cells [0, n) and the CPU seconds they took
Output = tuple[np.ndarray, np.ndarray, float]


class Runner(Protocol):
    threads: dict[str, int | None]  # effective counts inside one classifying process
    processes: int

    def __init__(self, config: ClassifyConfig, mosaic: Mosaic, images: np.ndarray) -> None: ...

    def classify(self, progress: bool, deadline: float | None = None) -> Output: ...

    def close(self) -> None: ...


def model_inputs(images: np.ndarray) -> torch.Tensor:
    """Test images uint8 (N, 28, 28) → the network's inputs float32 (N, 1, 28, 28), converted
    once when a runner starts: per batch, the conversion cost a tenth of a 1-thread forward."""
    return to_input(torch.tensor(images))  # a copy: the test set is a read-only array


def classify_range(
    net: Net,
    inputs: torch.Tensor,
    mosaic: Mosaic,
    batch_size: int,
    start: int,
    stop: int,
    on_batch: Callable[[int], None] | None = None,
    deadline: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """pred (n,) uint8 and confidence (n,) float32 for cells [start, start + n): n = stop-start,
    or with a `deadline` (a `time.perf_counter()` reading) the cells of the batches done when
    it passed, the first batch always.

    `start` must be a multiple of `batch_size`, so every caller sees the same batches.
    """
    pred = np.empty(stop - start, dtype=np.uint8)
    confidence = np.empty(stop - start, dtype=np.float32)
    done = stop - start
    with torch.inference_mode():
        for first, cells in mosaic.batches(batch_size, start, stop):
            x = inputs[torch.from_numpy(cells)]  # (b, 1, 28, 28)
            logits = net(x)  # (b, 10)
            lo, hi = first - start, first - start + len(x)
            # argmax of the logits, not of the softmax, where exp() can round two apart to a tie.
            pred[lo:hi] = logits.argmax(dim=1).numpy()
            confidence[lo:hi] = torch.softmax(logits, dim=1).amax(dim=1).numpy()
            if on_batch is not None:
                on_batch(len(x))
            if deadline is not None and time.perf_counter() >= deadline:
                done = hi
                break
    return pred[:done], confidence[:done]


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
        self.inputs, self.mosaic, self.batch_size = model_inputs(images), mosaic, config.batch_size
        warm_up(self.net, warm_up_batches(config), "cpu")
        self.threads = effective_threads()
        self.processes = 1

    def classify(self, progress: bool, deadline: float | None = None) -> Output:
        cpu0 = time.process_time()  # every thread of this process
        with _Progress(progress, self.mosaic.cells) as on_batch:
            pred, confidence = classify_range(
                self.net,
                self.inputs,
                self.mosaic,
                self.batch_size,
                0,
                self.mosaic.cells,
                on_batch,
                deadline,
            )
        return pred, confidence, time.process_time() - cpu0

    def close(self) -> None:
        pass


def warm_up_batches(config: ClassifyConfig) -> tuple[int, ...]:
    """The batch sizes a run classifies: whole batches (never more than the mosaic holds) and,
    where the cells do not divide into them, the last one's."""
    cells = config.rows * config.cols
    whole = min(config.batch_size, cells)
    rest = cells % whole
    return (whole, rest) if rest else (whole,)


@dataclass
class _WorkerState:
    net: Net
    inputs: torch.Tensor
    mosaic: Mosaic
    batch_size: int


# Set once in each worker process by _init_worker.
_worker: _WorkerState | None = None


def _init_worker(config: ClassifyConfig) -> None:  # pragma: no cover - runs in the workers
    global _worker
    # One torch thread BEFORE any torch op: N processes × 1 thread fill N cores without
    # oversubscription, and OpenMP's pool is created at that size.
    set_threads(1)
    if config.tune_malloc:
        tune_malloc()
    net = prepare(load_mosaicnet(config.weights, "cpu"), config.resolved_backend)
    warm_up(net, warm_up_batches(config), "cpu")
    images = load_mnist("test", config.data_source, config.mirrors).images
    mosaic = make_mosaic(config.rows, config.cols, config.seed)  # the parent's, by its seed
    _worker = _WorkerState(net, model_inputs(images), mosaic, config.batch_size)


def _worker_ready() -> dict[str, Any]:  # pragma: no cover - runs in the workers
    return {"pid": os.getpid(), **effective_threads()}


def _worker_chunk(start: int, stop: int) -> tuple[int, np.ndarray, np.ndarray, float]:
    assert _worker is not None  # pragma: no cover - runs in the workers
    cpu0 = time.process_time()
    w = _worker
    pred, confidence = classify_range(w.net, w.inputs, w.mosaic, w.batch_size, start, stop)
    return start, pred, confidence, time.process_time() - cpu0


def _attempt(fn: Callable[..., Any], *args: Any) -> tuple[str, Any]:  # pragma: no cover
    try:
        return "ok", fn(*args)
    except Exception as err:  # reported by the parent as one line
        return "error", " ".join(f"{type(err).__name__}: {err}".split())


def _worker_main(config: ClassifyConfig, conn: Connection) -> None:  # pragma: no cover
    """A worker process: start up and say so, then answer each (start, stop) chunk received
    until told to stop (None). A failure is sent back as one line instead of a traceback."""
    # The pipe closes when the parent goes away: then there is no one left to answer.
    with contextlib.suppress(EOFError, OSError):

        def start() -> dict[str, Any]:
            _init_worker(config)
            return _worker_ready()

        reply = _attempt(start)
        conn.send(reply)
        while reply[0] == "ok" and (task := conn.recv()) is not None:
            reply = _attempt(_worker_chunk, *task)
            conn.send(reply)


@contextlib.contextmanager
def _children_without_sigint() -> Iterator[None]:
    """Processes spawned in this block start with SIGINT blocked, and keep it blocked.

    A terminal's Ctrl-C goes to the whole process group. Workers that took it would each print
    a KeyboardInterrupt traceback (while importing torch, or from inside a chunk); instead the
    parent alone takes it and kills them. The signal mask survives fork and exec, and it covers
    the worker from its first instruction, before Python could install any handler of its own
    (multiprocessing protects its resource tracker the same way). Ignoring SIGINT instead would
    be inherited too, but would drop a Ctrl-C meant for the parent meanwhile.

    The parent defers its own SIGINT and SIGTERM (the CLI raises SIGTERM as an exception) to
    the end of the block, so no interrupt lands between a worker's start and its bookkeeping,
    where it would orphan the worker.
    """
    # Started lazily by the first spawn, the tracker unblocks SIGINT on its way: start it first.
    resource_tracker.ensure_running()
    deferred: list[int] = []
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():

        def defer(signum: int, frame: FrameType | None) -> None:
            deferred.append(signum)

        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, defer)
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    for signum in dict.fromkeys(deferred):
        handler = previous[signum]
        if callable(handler):
            handler(signum, None)
        elif handler == signal.SIG_DFL:
            signal.raise_signal(signum)


def chunk_bounds(cells: int, batch_size: int, chunks: int) -> list[tuple[int, int]]:
    """Split [0, cells) into at most `chunks` contiguous ranges of whole batches."""
    n_batches = -(-cells // batch_size)
    splits = np.array_split(np.arange(n_batches), min(chunks, n_batches))
    return [(int(s[0]) * batch_size, min(int(s[-1] + 1) * batch_size, cells)) for s in splits]


class ProcessRunner:
    """processes mode: spawned workers, started and warmed before the clock starts.

    Whatever ends a run early (a worker that dies or fails, Ctrl-C, SIGTERM, any exception) kills
    every worker before the error goes on, so nothing is left running and nothing hangs.
    """

    def __init__(self, config: ClassifyConfig, mosaic: Mosaic, images: np.ndarray) -> None:
        self.workers: list[tuple[BaseProcess, Connection]] = []
        self.mosaic = mosaic
        self.bounds = chunk_bounds(
            mosaic.cells, config.batch_size, config.workers * CHUNKS_PER_WORKER
        )
        self.batch_size = config.batch_size
        # spawn, not fork: a forked child of a process that already ran torch ops can deadlock
        # in OpenMP, and spawn gives every worker a clean interpreter on every platform.
        ctx = mp.get_context("spawn")
        try:
            with _children_without_sigint():
                for _ in range(config.workers):
                    ours, theirs = ctx.Pipe()
                    process = ctx.Process(target=_worker_main, args=(config, theirs), daemon=True)
                    self.workers.append((process, ours))
                    process.start()
                    theirs.close()  # the worker's end is the worker's alone: EOF when it dies
            ready = self._gather_ready()
        except OSError as err:  # fork or pipe failed: out of processes or memory
            self._kill()
            raise ClassifyError(
                f"cannot start {config.workers} worker processes: {err.strerror or err}; "
                "use fewer --workers"
            ) from None
        except BaseException:
            self._kill()
            raise
        self.processes = len({r["pid"] for r in ready})
        self.threads = {k: v for k, v in ready[0].items() if k != "pid"}

    def _gather_ready(self) -> list[dict[str, Any]]:
        """Each worker's start-up report, failing as soon as any worker dies or fails."""
        ready: dict[Connection, dict[str, Any]] = {}
        deadline = time.monotonic() + WORKER_READY_TIMEOUT_S
        while len(ready) < len(self.workers):
            waiting = [conn for _, conn in self.workers if conn not in ready]
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not (done := _wait(waiting, timeout=remaining)):
                raise ClassifyError(
                    f"worker processes did not start within {WORKER_READY_TIMEOUT_S:.0f} s"
                )
            for conn in done:
                ready[conn] = _receive(conn, "starting up")
        return [ready[conn] for _, conn in self.workers]

    def classify(self, progress: bool, deadline: float | None = None) -> Output:
        pred = np.empty(self.mosaic.cells, dtype=np.uint8)
        confidence = np.empty(self.mosaic.cells, dtype=np.float32)
        cpu_s = 0.0  # summed over the workers' chunks
        cells, size = self.mosaic.cells, self.batch_size
        # Under a deadline a chunk is one batch, so the call stops within a batch of it.
        chunks = iter(
            self.bounds
            if deadline is None
            else ((first, min(first + size, cells)) for first in range(0, cells, size))
        )
        todo = next(chunks, None)  # the next chunk to hand out, in order from cell 0
        handed = 0  # cells [0, handed) are handed out: what the call classifies
        busy: list[Connection] = []

        def hand_out(conn: Connection) -> None:
            nonlocal todo, handed
            assert todo is not None
            _send(conn, todo)
            handed = todo[1]
            todo = next(chunks, None)

        try:
            for _, conn in self.workers:  # one chunk each, deadline or not
                if todo is not None:
                    hand_out(conn)
                    busy.append(conn)
            with _Progress(progress, self.mosaic.cells) as on_batch:
                while busy:
                    for conn in _wait(busy):
                        start, chunk_pred, chunk_conf, chunk_cpu_s = _receive(conn, "classifying")
                        cpu_s += chunk_cpu_s
                        pred[start : start + len(chunk_pred)] = chunk_pred
                        confidence[start : start + len(chunk_conf)] = chunk_conf
                        if on_batch is not None:
                            on_batch(len(chunk_pred))
                        if todo is not None and (
                            deadline is None or time.perf_counter() < deadline
                        ):
                            hand_out(conn)
                        else:  # once past the deadline, every worker finishes what it holds
                            busy.remove(conn)
        except BaseException:
            self._kill()
            raise
        return pred[:handed], confidence[:handed], cpu_s

    def close(self) -> None:
        """Tell idle workers to exit and wait for them; kill any that do not."""
        for _, conn in self.workers:
            with contextlib.suppress(OSError):
                conn.send(None)
        deadline = time.monotonic() + WORKER_STOP_TIMEOUT_S
        for process, _ in self.workers:
            process.join(timeout=max(0.0, deadline - time.monotonic()))
        self._kill()

    def _kill(self) -> None:
        """SIGKILL every worker still running and reap it: a worker stopped in the middle of
        anything can hold nothing that matters, since each has its own pipe."""
        for process, _ in self.workers:
            if process.pid is not None and process.exitcode is None:
                process.kill()
        for process, conn in self.workers:
            if process.pid is not None:
                process.join()
            conn.close()
        self.workers = []


def _wait(conns: list[Connection], timeout: float | None = None) -> list[Connection]:
    """The connections among `conns` with a reply, or with their worker gone (end-of-file)."""
    return cast(list[Connection], wait(conns, timeout=timeout))


def _send(conn: Connection, task: tuple[int, int]) -> None:
    try:
        conn.send(task)
    except OSError:  # its end is closed: it died
        raise ClassifyError(
            "a worker process died while classifying (killed, or out of memory?)"
        ) from None


def _receive(conn: Connection, doing: str) -> Any:
    """A worker's next reply; a ClassifyError if it died (its pipe ended) or failed."""
    try:
        status, value = conn.recv()
    except (EOFError, OSError):  # OSError: it died in the middle of a message
        raise ClassifyError(
            f"a worker process died while {doing} (killed, or out of memory?)"
        ) from None
    if status == "error":
        raise ClassifyError(f"a worker process failed while {doing}: {value}")
    return value


class CudaRunner:
    """cuda mode: digits and index live on the GPU; batches are gathered there."""

    def __init__(self, config: ClassifyConfig, mosaic: Mosaic, images: np.ndarray) -> None:
        torch.backends.cuda.matmul.allow_tf32 = False  # keep float32 numerics, as on the CPU
        torch.backends.cudnn.allow_tf32 = False
        self.net = prepare(load_mosaicnet(config.weights, "cuda"), config.resolved_backend)
        self.batch_size, self.cells = config.batch_size, mosaic.cells
        self.images = torch.from_numpy(images).to("cuda")  # (10000, 28, 28) uint8, 7.8 MB
        self.index = torch.from_numpy(mosaic.index).to("cuda")  # (cells,) int64
        warm_up(self.net, warm_up_batches(config), "cuda")
        torch.cuda.synchronize()
        self.threads = effective_threads()
        self.processes = 1

    def classify(self, progress: bool, deadline: float | None = None) -> Output:
        cpu0 = time.process_time()
        pred = torch.empty(self.cells, dtype=torch.uint8, device="cuda")
        confidence = torch.empty(self.cells, dtype=torch.float32, device="cuda")
        done = self.cells
        queued: collections.deque[Any] = collections.deque()  # events of batches on the GPU
        with torch.inference_mode(), _Progress(progress, self.cells) as on_batch:
            for first in range(0, self.cells, self.batch_size):
                last = min(first + self.batch_size, self.cells)
                logits = self.net(to_input(self.images[self.index[first:last]]))
                pred[first:last] = logits.argmax(dim=1)
                confidence[first:last] = torch.softmax(logits, dim=1).amax(dim=1)
                if on_batch is not None:
                    on_batch(last - first)
                if deadline is None:
                    continue
                # The clock is read after a batch is done, not when it was queued.
                queued.append(torch.cuda.Event())
                queued[-1].record()
                if len(queued) > CUDA_BATCHES_IN_FLIGHT:
                    queued.popleft().synchronize()
                if time.perf_counter() >= deadline:
                    done = last
                    break
        # Copying back waits for the GPU.
        pred_np, confidence_np = pred[:done].cpu().numpy(), confidence[:done].cpu().numpy()
        return pred_np, confidence_np, time.process_time() - cpu0

    def close(self) -> None:
        pass


class RanksRunner:
    """ranks mode, inside one rank of an initialised process group: this rank's shard of whole
    batches, gathered on rank 0. `classify` returns the classified cells' arrays on rank 0 and
    this rank's own elsewhere; `compute_s` and `comm_s` hold each call's classifying and
    communicating seconds (the gather, which includes waiting for the slowest rank, and under a
    deadline the agreements to go on), `repeat_cells` the cells this rank classified."""

    def __init__(self, config: ClassifyConfig, mosaic: Mosaic, images: np.ndarray) -> None:
        import torch.distributed as dist

        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        bounds = chunk_bounds(mosaic.cells, config.batch_size, self.world_size)
        self.start, self.stop = bounds[self.rank] if self.rank < len(bounds) else (0, 0)
        self.net = prepare(load_mosaicnet(config.weights, "cpu"), config.resolved_backend)
        self.inputs, self.mosaic, self.batch_size = model_inputs(images), mosaic, config.batch_size
        warm_up(self.net, warm_up_batches(config), "cpu")
        self.threads = effective_threads()
        self.processes = self.world_size
        self.compute_s: list[float] = []
        self.comm_s: list[float] = []
        self.repeat_cells: list[int] = []

    def agree(self, stop: bool) -> bool:
        """Whether any rank wants to stop: every rank must classify the same steps and make
        the same timed repeats, or a collective would wait forever. One all-reduce."""
        import torch.distributed as dist

        flag = torch.tensor([int(stop)], dtype=torch.int32)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def _own_batches(
        self, deadline: float | None, on_batch: Callable[[int], None] | None
    ) -> tuple[list[tuple[int, int]], np.ndarray, np.ndarray, float]:
        """This rank's work in one call: the cell ranges it classified, in order, their
        predictions and confidences end to end, and the seconds spent agreeing to go on."""
        if deadline is None:
            pred, confidence = classify_range(
                self.net, self.inputs, self.mosaic, self.batch_size, self.start, self.stop, on_batch
            )
            return [(self.start, self.stop)], pred, confidence, 0.0
        cells, size = self.mosaic.cells, self.batch_size
        ranges: list[tuple[int, int]] = []
        preds, confidences = [], []
        agree_s = 0.0
        step = 0
        while True:
            first = (step * self.world_size + self.rank) * size
            if first < cells:
                last = min(first + size, cells)
                pred, confidence = classify_range(
                    self.net, self.inputs, self.mosaic, size, first, last, on_batch
                )
                ranges.append((first, last))
                preds.append(pred)
                confidences.append(confidence)
            step += 1
            if step * self.world_size * size >= cells:  # the pass is done, on every rank
                break
            t0 = time.perf_counter()
            stop = self.agree(t0 >= deadline)
            agree_s += time.perf_counter() - t0
            if stop:
                break
        return (
            ranges,
            np.concatenate(preds or [np.empty(0, np.uint8)]),
            np.concatenate(confidences or [np.empty(0, np.float32)]),
            agree_s,
        )

    def _share(self, deadline: float | None) -> int:
        """The cells this rank classifies in a whole pass (its progress bar's total)."""
        if deadline is None:
            return self.stop - self.start
        cells, size = self.mosaic.cells, self.batch_size
        firsts = range(self.rank * size, cells, self.world_size * size)
        return sum(min(size, cells - first) for first in firsts)

    def classify(self, progress: bool, deadline: float | None = None) -> Output:
        import torch.distributed as dist

        t0 = time.perf_counter()
        cpu0 = time.process_time()
        with _Progress(progress and self.rank == 0, self._share(deadline)) as on_batch:
            ranges, pred, confidence, agree_s = self._own_batches(deadline, on_batch)
        cpu_s = time.process_time() - cpu0
        t1 = time.perf_counter()
        self.repeat_cells.append(len(pred))
        parts: list[Any] | None = [None] * self.world_size if self.rank == 0 else None
        dist.gather_object((ranges, pred, confidence, cpu_s), parts, dst=0)
        self.compute_s.append(t1 - t0 - agree_s)
        self.comm_s.append(time.perf_counter() - t1 + agree_s)
        if parts is None:
            return pred, confidence, cpu_s
        # Every rank's ranges together are cells [0, n): whole batches from cell 0.
        n = sum(len(part[1]) for part in parts)
        whole_pred = np.empty(n, dtype=np.uint8)
        whole_confidence = np.empty(n, dtype=np.float32)
        for part_ranges, part_pred, part_confidence, _ in parts:
            offset = 0
            for first, last in part_ranges:
                size = last - first
                whole_pred[first:last] = part_pred[offset : offset + size]
                whole_confidence[first:last] = part_confidence[offset : offset + size]
                offset += size
        return whole_pred, whole_confidence, sum(part[3] for part in parts)

    def close(self) -> None:
        pass
