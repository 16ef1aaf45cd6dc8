"""Parallel CPU engine: numba, one fused forward + backward + gradient pass per image.

A batch is cut into one contiguous chunk of images per thread (`prange` over chunks). Each
thread runs conv → ReLU → pool → FC → softmax → backward for one image at a time in its own
scratch rows, adding the conv gradient into its own (tiny) gradient buffer, and keeps each
image's pooled activations and dlogits. A second parallel loop gives each thread a slice of the
FC columns: it forms that slice of the batch's FC weight gradient, Σ_b dlogits ⊗ pooled, and
applies the update; thread 0 also sums the per-thread conv gradients in thread order and
updates the conv weights and biases. There are no races and no atomics, the result does not
depend on scheduling, and no per-thread copy of the large FC gradient has to be zeroed and
reduced every step. Buffers are allocated once (the per-image rows again only if a larger
batch arrives); a step allocates nothing.

Internal layout (why it differs from torch's): the filter axis F is innermost everywhere, so
every inner loop is a unit-stride loop over filters that LLVM turns into SIMD.
    wc  (9, F)        wc[k·3+l, f] = conv_w[f, 0, k, l]
    bc  (F,)
    wf  (10, 169·F)   wf[c, p·F+f] = fc_w[c, f·169+p]     p = pooled cell i·13+j
    bf  (10,)
`params()` converts back to the torch layout.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from cnnpar.measure import numba_settings
from cnnpar.nets.tinycnn import spec
from cnnpar.nets.tinycnn.spec import CELLS, CLASSES, IMAGE, KERNEL, POOL, Params

# Re-association lets LLVM vectorise the dot products; contraction gives FMAs. No nnan/ninf:
# the softmax must stay exact about infinities.
FAST = {"reassoc", "contract", "nsz"}
# Steps per compiled call: long enough that Python's per-call cost vanishes, short enough that
# the progress bar still moves (64 steps at B=32 is about 10 ms).
QUEUE_STEPS = 64
FC_TILE = 512  # FC columns per tile of the batched FC gradient: a (10, 512) float32 tile is 20 KB
# Cache compiled code where numba can write (a read-only install and home has no cache
# locator, and `cache=CACHE` would fail at import); off if nowhere is writable.
CACHE = numba_settings.prepare_cache(__file__)


@njit(fastmath=FAST, cache=CACHE)
def _to_float(image: np.ndarray, x: np.ndarray) -> None:
    """uint8 (28, 28) → float32 (28, 28) / 255, into x."""
    for i in range(IMAGE):
        for j in range(IMAGE):
            x[i, j] = np.float32(image[i, j]) / np.float32(255.0)


@njit(fastmath=FAST, cache=CACHE)
def _conv_pool(x: np.ndarray, wc: np.ndarray, bc: np.ndarray, pooled: np.ndarray, arg: np.ndarray):
    """conv 3×3 → max-pool 2×2 → ReLU for one image, all F filters at once.

    pooled (169·F,) gets max(0, window max); arg (169·F,) the winning window position
    0..3 (row-major, first maximum wins, as torch), or -1 where ReLU gates the gradient off.
    Each pooled cell reads one 4×4 input patch; its four 3×3 windows are the four conv outputs.
    """
    n_f = bc.shape[0]
    for pi in range(POOL):
        for pj in range(POOL):
            r = 2 * pi
            s = 2 * pj
            x00, x01, x02, x03 = x[r, s], x[r, s + 1], x[r, s + 2], x[r, s + 3]
            x10, x11, x12, x13 = x[r + 1, s], x[r + 1, s + 1], x[r + 1, s + 2], x[r + 1, s + 3]
            x20, x21, x22, x23 = x[r + 2, s], x[r + 2, s + 1], x[r + 2, s + 2], x[r + 2, s + 3]
            x30, x31, x32, x33 = x[r + 3, s], x[r + 3, s + 1], x[r + 3, s + 2], x[r + 3, s + 3]
            base = (pi * POOL + pj) * n_f
            for f in range(n_f):  # SIMD over filters
                w0, w1, w2 = wc[0, f], wc[1, f], wc[2, f]
                w3, w4, w5 = wc[3, f], wc[4, f], wc[5, f]
                w6, w7, w8 = wc[6, f], wc[7, f], wc[8, f]
                b = bc[f]
                a0 = (
                    b + w0 * x00 + w1 * x01 + w2 * x02 + w3 * x10 + w4 * x11 + w5 * x12
                    + w6 * x20 + w7 * x21 + w8 * x22
                )  # fmt: skip
                a1 = (
                    b + w0 * x01 + w1 * x02 + w2 * x03 + w3 * x11 + w4 * x12 + w5 * x13
                    + w6 * x21 + w7 * x22 + w8 * x23
                )  # fmt: skip
                a2 = (
                    b + w0 * x10 + w1 * x11 + w2 * x12 + w3 * x20 + w4 * x21 + w5 * x22
                    + w6 * x30 + w7 * x31 + w8 * x32
                )  # fmt: skip
                a3 = (
                    b + w0 * x11 + w1 * x12 + w2 * x13 + w3 * x21 + w4 * x22 + w5 * x23
                    + w6 * x31 + w7 * x32 + w8 * x33
                )  # fmt: skip
                best = a0
                k = 0
                if a1 > best:
                    best = a1
                    k = 1
                if a2 > best:
                    best = a2
                    k = 2
                if a3 > best:
                    best = a3
                    k = 3
                if best > 0:
                    pooled[base + f] = best
                    arg[base + f] = k
                else:
                    pooled[base + f] = 0
                    arg[base + f] = -1


@njit(fastmath=FAST, cache=CACHE)
def _fc_forward(pooled: np.ndarray, wf: np.ndarray, bf: np.ndarray, logits: np.ndarray) -> None:
    n_in = wf.shape[1]
    for c in range(CLASSES):
        acc = bf[c]
        for j in range(n_in):
            acc += wf[c, j] * pooled[j]
        logits[c] = acc


@njit(fastmath=FAST, cache=CACHE)
def _softmax_xent(logits: np.ndarray, y: int, scale: np.float32, dlogits: np.ndarray):
    """Return (loss, correct) of one image; dlogits = scale · (softmax − onehot(y))."""
    top = 0
    for c in range(1, CLASSES):
        if logits[c] > logits[top]:
            top = c
    m = logits[top]
    z = np.float32(0.0)
    for c in range(CLASSES):
        e = np.exp(logits[c] - m)
        dlogits[c] = e
        z += e
    for c in range(CLASSES):
        dlogits[c] = scale * (dlogits[c] / z)
    dlogits[y] -= scale
    loss = np.log(z) + m - logits[y]
    return loss, top == y


@njit(fastmath=FAST, cache=CACHE)
def _fc_dpool(wf: np.ndarray, dlogits: np.ndarray, dpool: np.ndarray) -> None:
    """dpool = wfᵀ · dlogits: the loss gradient at the pooled outputs (with the old wf)."""
    n_in = wf.shape[1]
    for j in range(n_in):
        dpool[j] = 0
    for c in range(CLASSES):
        d = dlogits[c]
        for j in range(n_in):
            dpool[j] += d * wf[c, j]


@njit(fastmath=FAST, cache=CACHE)
def _conv_backward(x, arg, dpool, gwc, gbc, n_f: int) -> None:
    """Route each pooled gradient to its winning conv output and correlate with the input.

    Written densely over the four window positions (masked), so the loop over filters stays SIMD.
    gwc is this thread's flat row, gwc[k·F+f] for kernel tap k; n_f = F (rows are padded).
    """
    for pi in range(POOL):
        for pj in range(POOL):
            r = 2 * pi
            s = 2 * pj
            x00, x01, x02, x03 = x[r, s], x[r, s + 1], x[r, s + 2], x[r, s + 3]
            x10, x11, x12, x13 = x[r + 1, s], x[r + 1, s + 1], x[r + 1, s + 2], x[r + 1, s + 3]
            x20, x21, x22, x23 = x[r + 2, s], x[r + 2, s + 1], x[r + 2, s + 2], x[r + 2, s + 3]
            x30, x31, x32, x33 = x[r + 3, s], x[r + 3, s + 1], x[r + 3, s + 2], x[r + 3, s + 3]
            base = (pi * POOL + pj) * n_f
            for f in range(n_f):  # SIMD over filters
                a = arg[base + f]
                g = dpool[base + f]
                zero = np.float32(0.0)
                g0 = g if a == 0 else zero
                g1 = g if a == 1 else zero
                g2 = g if a == 2 else zero
                g3 = g if a == 3 else zero
                gbc[f] += g0 + g1 + g2 + g3
                gwc[0 * n_f + f] += g0 * x00 + g1 * x01 + g2 * x10 + g3 * x11
                gwc[1 * n_f + f] += g0 * x01 + g1 * x02 + g2 * x11 + g3 * x12
                gwc[2 * n_f + f] += g0 * x02 + g1 * x03 + g2 * x12 + g3 * x13
                gwc[3 * n_f + f] += g0 * x10 + g1 * x11 + g2 * x20 + g3 * x21
                gwc[4 * n_f + f] += g0 * x11 + g1 * x12 + g2 * x21 + g3 * x22
                gwc[5 * n_f + f] += g0 * x12 + g1 * x13 + g2 * x22 + g3 * x23
                gwc[6 * n_f + f] += g0 * x20 + g1 * x21 + g2 * x30 + g3 * x31
                gwc[7 * n_f + f] += g0 * x21 + g1 * x22 + g2 * x31 + g3 * x32
                gwc[8 * n_f + f] += g0 * x22 + g1 * x23 + g2 * x32 + g3 * x33


@njit(fastmath=FAST, cache=CACHE)
def _fc_update(pooled, dlogits, n: int, lr, wf, acc, lo: int, hi: int) -> None:
    """wf[:, lo:hi] -= lr · Σ_b dlogits[b] ⊗ pooled[b, lo:hi], the batch's FC weight gradient.

    Tiled over columns so a class's accumulator tile stays in L1 while the batch streams by.
    The loop order matters: with the class loop innermost LLVM unrolls it and vectorises
    across classes with gathers, ten times slower than this unit-stride inner loop.
    """
    tile = acc.shape[0] // CLASSES
    for j0 in range(lo, hi, tile):
        width = min(tile, hi - j0)
        for c in range(CLASSES):
            a = acc[c * tile : c * tile + width]
            a[:] = 0
            for b in range(n):
                d = dlogits[b, c]
                row = pooled[b, j0 : j0 + width]
                for j in range(width):
                    a[j] += d * row[j]
            w = wf[c, j0 : j0 + width]
            for j in range(width):
                w[j] -= lr * a[j]


@njit(fastmath=FAST, cache=CACHE)
def _sgd_sum(p: np.ndarray, g: np.ndarray, lr) -> None:
    """p (n,) -= lr · Σ_t g[t, :n]; g holds one padded gradient row per thread."""
    for j in range(p.shape[0]):
        total = g[0, j]
        for t in range(1, g.shape[0]):
            total += g[t, j]
        p[j] -= lr * total


@njit(parallel=True, fastmath=FAST, cache=CACHE)
def _train_steps(
    images, labels, bounds, lr, wc, bc, wf, bf,  # data, steps (S, 2) [start, stop), weights
    pooled, dlogits,  # per-image rows of a batch, (≥B, padded)
    xs, arg, dpool, logits, acc, gwc, gbc, stats,  # per-thread rows, (T, padded)
    losses, correct,  # out, (S,): batch-mean loss and #correct of each step
):  # fmt: skip
    """SGD steps on images[start:stop] for each row of bounds, in order, in one compiled call.

    Per step, parallel loop 1, one contiguous chunk of the batch per thread: per image, the
    forward pass, softmax, and the backward pass down to the conv weights, accumulated in the
    thread's own gwc/gbc; the pooled activations and dlogits are kept per image. Parallel loop 2,
    one slice of the FC columns per thread: the batch's FC weight gradient (Σ_b dlogits ⊗ pooled)
    and the update; thread 0 also sums the small conv and bias gradients in thread order and
    updates them. Rows written by different threads are padded apart (see `_per_thread`):
    without that, the per-image accumulators false-share and two threads run slower than one.
    Running many steps per call keeps Python out of the step loop, which at B=32 is a fixed
    cost that does not shrink with more threads.
    """
    n_threads = xs.shape[0]
    n_f = bc.shape[0]
    n_in = wf.shape[1]
    for s in range(bounds.shape[0]):
        start = bounds[s, 0]
        n = bounds[s, 1] - start
        scale = np.float32(1.0) / np.float32(n)  # the loss is a batch mean
        for t in prange(n_threads):
            gwc[t, :] = 0
            gbc[t, :] = 0
            loss_sum = 0.0
            n_correct = 0
            for b in range(n * t // n_threads, n * (t + 1) // n_threads):
                i = start + b
                _to_float(images[i], xs[t])
                _conv_pool(xs[t], wc, bc, pooled[b], arg[t])
                _fc_forward(pooled[b], wf, bf, logits[t])
                loss, ok = _softmax_xent(logits[t], labels[i], scale, dlogits[b])
                loss_sum += loss
                n_correct += ok
                _fc_dpool(wf, dlogits[b], dpool[t])
                _conv_backward(xs[t], arg[t], dpool[t], gwc[t], gbc[t], n_f)
            stats[t, 0] = loss_sum
            stats[t, 1] = n_correct
        for t in prange(n_threads):
            # Slice bounds on 16-float (cache line) boundaries: no line is written by two threads.
            lo = (n_in * t // n_threads) // 16 * 16
            hi = n_in if t == n_threads - 1 else (n_in * (t + 1) // n_threads) // 16 * 16
            _fc_update(pooled, dlogits, n, lr, wf, acc[t], lo, hi)
            if t == 0:
                _sgd_sum(wc.reshape(wc.size), gwc, lr)
                _sgd_sum(bc, gbc, lr)
                for c in range(CLASSES):
                    total = dlogits[0, c]
                    for b in range(1, n):
                        total += dlogits[b, c]
                    bf[c] -= lr * total
        loss_total = 0.0
        correct_total = 0
        for t in range(n_threads):  # fixed order: the loss does not depend on scheduling
            loss_total += stats[t, 0]
            correct_total += int(stats[t, 1])
        losses[s] = loss_total / n
        correct[s] = correct_total


@njit(parallel=True, fastmath=FAST, cache=CACHE)
def _predict(images, wc, bc, wf, bf, xs, pooled, arg, out) -> None:
    """Logits of every image into out (n, 10), images split into one chunk per thread."""
    n_threads = xs.shape[0]
    n = images.shape[0]
    for t in prange(n_threads):
        for i in range(n * t // n_threads, n * (t + 1) // n_threads):
            _to_float(images[i], xs[t])
            _conv_pool(xs[t], wc, bc, pooled[t], arg[t])
            _fc_forward(pooled[t], wf, bf, out[i])


def to_internal(params: Params) -> dict[str, np.ndarray]:
    """Torch layout → the engine's filter-innermost layout."""
    f = spec.check_params(params)
    fc_w = params["fc_w"].reshape(CLASSES, f, CELLS).transpose(0, 2, 1)  # (10, 169, F)
    return {
        "wc": np.ascontiguousarray(params["conv_w"].reshape(f, KERNEL * KERNEL).T, np.float32),
        "bc": np.array(params["conv_b"], np.float32),
        "wf": np.ascontiguousarray(fc_w, np.float32).reshape(CLASSES, CELLS * f),
        "bf": np.array(params["fc_b"], np.float32),
    }


def from_internal(w: dict[str, np.ndarray]) -> Params:
    """The engine's layout → torch layout, as fresh float32 arrays."""
    f = w["bc"].shape[0]
    fc_w = w["wf"].reshape(CLASSES, CELLS, f).transpose(0, 2, 1)  # (10, F, 169)
    return {
        "conv_w": np.ascontiguousarray(w["wc"].T).reshape(f, 1, KERNEL, KERNEL),
        "conv_b": w["bc"].copy(),
        "fc_w": np.ascontiguousarray(fc_w).reshape(CLASSES, f * CELLS),
        "fc_b": w["bf"].copy(),
    }


def _per_thread(n_t: int, n: int, dtype: type) -> np.ndarray:
    """(T, row) zeros with row ≥ n rounded up to whole cache lines plus one spare line, so the
    used prefixes of two threads' rows never share a 64-byte line, whatever the base address."""
    per_line = 64 // np.dtype(dtype).itemsize
    row = -(-n // per_line) * per_line + per_line
    return np.zeros((n_t, row), dtype)


def _readonly(a: np.ndarray, dtype: type | None = None) -> np.ndarray:
    """A read-only C-contiguous view (a copy only if the layout or dtype must change).

    numba compiles a separate version for read-only arrays (MNIST loaded from bytes is
    read-only), so data always goes in read-only: one version, compiled by `warm_up`.
    """
    view = np.ascontiguousarray(a, dtype).view()
    view.flags.writeable = False
    return view


class NumbaEngine:
    """`train_step` queues a step; queued steps run in one compiled call (`_train_steps`) once
    `QUEUE_STEPS` have gathered, or when anything reads the weights or the statistics."""

    def __init__(self, params: Params, lr: float, threads: int) -> None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1 (got {threads})")
        # The pool size is fixed when numba starts; more chunks than threads would only queue.
        self.threads = min(threads, numba.config.NUMBA_NUM_THREADS)
        numba.set_num_threads(self.threads)
        self.lr = np.float32(lr)
        self._w = to_internal(params)
        self._scratch = self._allocate(self.threads, int(self._w["bc"].shape[0]))
        self._batch = self._allocate_batch(0)
        self._images = np.empty((0, IMAGE, IMAGE), np.uint8)
        self._labels = np.empty(0, np.int64)
        self._queue: list[tuple[int, int]] = []
        self._losses: list[np.ndarray] = []
        self._correct: list[np.ndarray] = []

    @staticmethod
    def _allocate(n_t: int, f: int) -> dict[str, np.ndarray]:
        k = CELLS * f
        return {
            # Two spare image rows (224 bytes) keep the threads' images off a shared line.
            "xs": np.zeros((n_t, IMAGE + 2, IMAGE), np.float32),
            "pooled": _per_thread(n_t, k, np.float32),  # for predict
            "arg": _per_thread(n_t, k, np.int32),
            "dpool": _per_thread(n_t, k, np.float32),
            "logits": _per_thread(n_t, CLASSES, np.float32),
            "acc": _per_thread(n_t, CLASSES * FC_TILE, np.float32),
            "gwc": _per_thread(n_t, KERNEL * KERNEL * f, np.float32),
            "gbc": _per_thread(n_t, f, np.float32),
            "stats": _per_thread(n_t, 2, np.float64),
        }

    def _allocate_batch(self, n: int) -> dict[str, np.ndarray]:
        """Per-image rows for a batch of n; grown only when a larger batch first arrives."""
        k = CELLS * int(self._w["bc"].shape[0])
        return {
            "pooled": _per_thread(n, k, np.float32),
            "dlogits": _per_thread(n, CLASSES, np.float32),
        }

    @classmethod
    def from_params(cls, params: Params, *, lr: float, threads: int = 1) -> NumbaEngine:
        return cls(params, lr, threads)

    def _run(self, w, images, labels, bounds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Run the steps in bounds (S, 2) on w in place; (losses, #correct), one per step."""
        largest = int((bounds[:, 1] - bounds[:, 0]).max())
        if largest > self._batch["pooled"].shape[0]:
            self._batch = self._allocate_batch(largest)
        s, bt = self._scratch, self._batch
        losses = np.empty(len(bounds), np.float64)
        correct = np.empty(len(bounds), np.int64)
        _train_steps(
            images, labels, bounds, self.lr, w["wc"], w["bc"], w["wf"], w["bf"],
            bt["pooled"], bt["dlogits"],
            s["xs"], s["arg"], s["dpool"], s["logits"], s["acc"], s["gwc"], s["gbc"], s["stats"],
            losses, correct,
        )  # fmt: skip
        return losses, correct

    def _flush(self) -> None:
        if self._queue:
            bounds = np.array(self._queue, np.int64).reshape(-1, 2)
            self._queue.clear()
            losses, correct = self._run(self._w, self._images, self._labels, bounds)
            self._losses.append(losses)
            self._correct.append(correct)

    def warm_up(self) -> None:
        """Compile (or load from cache) both kernels on a throwaway copy of the weights."""
        w = {k: v.copy() for k, v in self._w.items()}
        images = _readonly(np.zeros((2, IMAGE, IMAGE), np.uint8))
        self._run(w, images, _readonly(np.zeros(2, np.int64)), np.array([[0, 2]], np.int64))
        s = self._scratch
        _predict(images, w["wc"], w["bc"], w["wf"], w["bf"], s["xs"], s["pooled"], s["arg"],
                 np.zeros((2, CLASSES), np.float32))  # fmt: skip

    def load_epoch(self, images: np.ndarray, labels: np.ndarray) -> None:
        self._flush()  # steps queued on the previous epoch's data run on that data
        self._images = _readonly(images, np.uint8)
        self._labels = _readonly(labels, np.int64)
        self._losses, self._correct = [], []

    def train_step(self, start: int, stop: int) -> None:
        if not 0 <= start < stop <= len(self._labels):
            raise ValueError(f"step [{start}, {stop}) is outside the {len(self._labels)} images")
        self._queue.append((start, stop))
        if len(self._queue) >= QUEUE_STEPS:
            self._flush()

    def epoch_stats(self) -> tuple[np.ndarray, np.ndarray]:
        self._flush()
        if not self._losses:
            return np.empty(0, np.float64), np.empty(0, np.int64)
        return np.concatenate(self._losses), np.concatenate(self._correct)

    def predict(self, images: np.ndarray) -> np.ndarray:
        self._flush()
        out = np.empty((images.shape[0], CLASSES), np.float32)
        w, s = self._w, self._scratch
        _predict(_readonly(images, np.uint8), w["wc"], w["bc"], w["wf"], w["bf"],
                 s["xs"], s["pooled"], s["arg"], out)  # fmt: skip
        return out

    def params(self) -> Params:
        self._flush()
        return from_internal(self._w)
