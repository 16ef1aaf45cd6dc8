"""GPU engine: numba.cuda kernels, one thread per output element (or per reduction slice).

Everything a step touches lives on the device: the weights, the epoch's images and labels
(copied once in `load_epoch`), the activations, and the per-step loss and #correct, which are
read back once per epoch in `epoch_stats`. A step is seven kernel launches on one stream, and
the stream's order is what makes it correct: the conv gradient reads the FC weights before the
FC update kernel changes them.

    conv_pool     thread per (image, filter, pooled cell): 4 conv outputs, max, argmax, ReLU
    fc_forward    block per image: strided dot products, shared-memory tree reduction
    softmax       thread per image: loss, #correct, dlogits = (softmax − onehot) / B
    step_stats    one block: tree reduction of the batch's loss and #correct into slot `step`
    conv_grad     block per (filter, slice of the batch's cells): tree reduction, then one
                  atomic add per block and tap into the (F, 10) gradient buffer
    fc_update     thread per FC weight: Σ over the batch, then p -= lr·g in place
    conv_update   thread per conv weight/bias: p -= lr·g, and zero the gradient buffer

Under NUMBA_ENABLE_CUDASIM=1 (set before numba.cuda is first imported) the same kernels run
in numba's Python simulator: slow, but it checks the indexing and the reductions without a GPU.
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda, float32, int32

from cnnpar.nets.tinycnn import spec
from cnnpar.nets.tinycnn.spec import CELLS, CLASSES, IMAGE, KERNEL, POOL, Params

TPB = 128  # threads per block; a power of two for the tree reductions
TAPS = KERNEL * KERNEL  # 9 conv weights per filter; slot 9 of the gradient buffer is the bias
CELLS_PER_THREAD = 8  # conv_grad work per thread before its block reduces


@cuda.jit
def _k_conv_pool(images, start, n, conv_w, conv_b, pooled, arg):
    """pooled[b, f·169+p] = max(0, max of the 4 conv outputs in cell p); arg = winner or -1."""
    idx = cuda.grid(1)
    n_f = conv_b.shape[0]
    if idx >= n * n_f * CELLS:
        return
    b = idx // (n_f * CELLS)
    j = idx - b * (n_f * CELLS)  # f·169 + p, torch's flatten order
    f = j // CELLS
    p = j - f * CELLS
    r = 2 * (p // POOL)
    s = 2 * (p % POOL)
    best = float32(0.0)
    k = 0
    for d in range(4):  # window positions in row-major order; the first maximum wins
        acc = conv_b[f]
        for u in range(KERNEL):
            for v in range(KERNEL):
                pixel = float32(images[start + b, r + d // 2 + u, s + d % 2 + v]) / float32(255.0)
                acc += conv_w[f, u * KERNEL + v] * pixel
        if d == 0 or acc > best:
            best = acc
            k = d
    if best > 0:
        pooled[b, j] = best
        arg[b, j] = k
    else:  # ReLU: zero output, and no gradient flows back
        pooled[b, j] = 0
        arg[b, j] = -1


@cuda.jit
def _k_fc_forward(pooled, fc_w, fc_b, logits):
    """Block b: logits[b, c] = fc_b[c] + Σ_j fc_w[c, j] · pooled[b, j]."""
    b = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    part = cuda.shared.array((CLASSES, TPB), float32)
    acc = cuda.local.array(CLASSES, float32)
    for c in range(CLASSES):
        acc[c] = 0
    for j in range(tid, fc_w.shape[1], TPB):
        v = pooled[b, j]
        for c in range(CLASSES):
            acc[c] += fc_w[c, j] * v
    for c in range(CLASSES):
        part[c, tid] = acc[c]
    cuda.syncthreads()
    stride = TPB // 2
    while stride > 0:
        if tid < stride:
            for c in range(CLASSES):
                part[c, tid] += part[c, tid + stride]
        cuda.syncthreads()
        stride //= 2
    if tid < CLASSES:
        logits[b, tid] = fc_b[tid] + part[tid, 0]


@cuda.jit
def _k_softmax(logits, labels, start, n, dlogits, loss_img, correct_img):
    b = cuda.grid(1)
    if b >= n:
        return
    y = labels[start + b]
    top = 0
    for c in range(1, CLASSES):
        if logits[b, c] > logits[b, top]:
            top = c
    m = logits[b, top]
    z = float32(0.0)
    for c in range(CLASSES):
        e = math.exp(logits[b, c] - m)
        dlogits[b, c] = e
        z += e
    scale = float32(1.0) / float32(n)  # the loss is a batch mean
    for c in range(CLASSES):
        dlogits[b, c] = scale * (dlogits[b, c] / z)
    dlogits[b, y] -= scale
    loss_img[b] = math.log(z) + m - logits[b, y]
    correct_img[b] = 1 if top == y else 0


@cuda.jit
def _k_step_stats(loss_img, correct_img, n, step_loss, step_correct, step):
    """One block: step_loss[step] = mean(loss_img[:n]), step_correct[step] = Σ correct_img."""
    tid = cuda.threadIdx.x
    part_loss = cuda.shared.array(TPB, float32)
    part_ok = cuda.shared.array(TPB, int32)
    total = float32(0.0)
    ok = 0
    for i in range(tid, n, TPB):
        total += loss_img[i]
        ok += correct_img[i]
    part_loss[tid] = total
    part_ok[tid] = ok
    cuda.syncthreads()
    stride = TPB // 2
    while stride > 0:
        if tid < stride:
            part_loss[tid] += part_loss[tid + stride]
            part_ok[tid] += part_ok[tid + stride]
        cuda.syncthreads()
        stride //= 2
    if tid == 0:
        step_loss[step] = part_loss[0] / float32(n)
        step_correct[step] = part_ok[0]


@cuda.jit
def _k_conv_grad(images, start, n, arg, dlogits, fc_w, gconv):
    """Block (f, slice): gconv[f, tap] += Σ over its (image, cell) pairs of g · x; tap 9 = bias.

    g, the gradient at the winning conv output, is fc_wᵀ · dlogits at that cell (old fc_w).
    """
    f = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    total = n * CELLS
    lo = total * cuda.blockIdx.y // cuda.gridDim.y
    hi = total * (cuda.blockIdx.y + 1) // cuda.gridDim.y
    part = cuda.shared.array((TAPS + 1, TPB), float32)
    acc = cuda.local.array(TAPS + 1, float32)
    for t in range(TAPS + 1):
        acc[t] = 0
    for e in range(lo + tid, hi, TPB):
        b = e // CELLS
        p = e - b * CELLS
        j = f * CELLS + p
        k = arg[b, j]
        if k >= 0:
            g = float32(0.0)
            for c in range(CLASSES):
                g += fc_w[c, j] * dlogits[b, c]
            r = 2 * (p // POOL) + k // 2
            s = 2 * (p % POOL) + k % 2
            for u in range(KERNEL):
                for v in range(KERNEL):
                    pixel = float32(images[start + b, r + u, s + v]) / float32(255.0)
                    acc[u * KERNEL + v] += g * pixel
            acc[TAPS] += g
    for t in range(TAPS + 1):
        part[t, tid] = acc[t]
    cuda.syncthreads()
    stride = TPB // 2
    while stride > 0:
        if tid < stride:
            for t in range(TAPS + 1):
                part[t, tid] += part[t, tid + stride]
        cuda.syncthreads()
        stride //= 2
    if tid < TAPS + 1:
        cuda.atomic.add(gconv, (f, tid), part[tid, 0])


@cuda.jit
def _k_fc_update(pooled, dlogits, n, lr, fc_w, fc_b):
    """Thread per FC weight (then per bias): g = Σ_b dlogits[b, c] · pooled[b, j]; p -= lr·g."""
    idx = cuda.grid(1)
    n_in = fc_w.shape[1]
    if idx < CLASSES * n_in:
        c = idx // n_in
        j = idx - c * n_in
        g = float32(0.0)
        for b in range(n):
            g += dlogits[b, c] * pooled[b, j]
        fc_w[c, j] -= lr * g
    elif idx < CLASSES * n_in + CLASSES:
        c = idx - CLASSES * n_in
        g = float32(0.0)
        for b in range(n):
            g += dlogits[b, c]
        fc_b[c] -= lr * g


@cuda.jit
def _k_conv_update(lr, gconv, conv_w, conv_b):
    idx = cuda.grid(1)
    if idx >= conv_b.shape[0] * (TAPS + 1):
        return
    f = idx // (TAPS + 1)
    t = idx - f * (TAPS + 1)
    if t < TAPS:
        conv_w[f, t] -= lr * gconv[f, t]
    else:
        conv_b[f] -= lr * gconv[f, t]
    gconv[f, t] = 0  # ready for the next step's atomics


def _blocks(n: int) -> int:
    return max(1, -(-n // TPB))


class CudaEngine:
    def __init__(self, params: Params, lr: float) -> None:
        self.filters = spec.check_params(params)
        self.threads = 1
        self.lr = np.float32(lr)
        self.stream = cuda.stream()
        self._w = self._upload(params)
        self._gconv = cuda.to_device(np.zeros((self.filters, TAPS + 1), np.float32), self.stream)
        self._capacity = 0
        self._images = cuda.device_array((0, IMAGE, IMAGE), np.uint8)
        self._labels = cuda.device_array(0, np.int64)
        self._step_loss = cuda.device_array(0, np.float32)
        self._step_correct = cuda.device_array(0, np.int32)
        self._step_index = 0

    @classmethod
    def from_params(cls, params: Params, *, lr: float, threads: int = 1) -> CudaEngine:
        return cls(params, lr)

    def _upload(self, params: Params) -> dict:
        f = self.filters
        host = {
            "conv_w": np.ascontiguousarray(params["conv_w"].reshape(f, TAPS), np.float32),
            "conv_b": np.ascontiguousarray(params["conv_b"], np.float32),
            "fc_w": np.ascontiguousarray(params["fc_w"], np.float32),
            "fc_b": np.ascontiguousarray(params["fc_b"], np.float32),
        }
        return {k: cuda.to_device(v, self.stream) for k, v in host.items()}

    def _ensure_capacity(self, n: int) -> None:
        """Activation buffers for n images; they only grow, so steady state allocates nothing."""
        if n <= self._capacity:
            return
        k = CELLS * self.filters
        self._pooled = cuda.device_array((n, k), np.float32, stream=self.stream)
        self._arg = cuda.device_array((n, k), np.int32, stream=self.stream)
        self._logits = cuda.device_array((n, CLASSES), np.float32, stream=self.stream)
        self._dlogits = cuda.device_array((n, CLASSES), np.float32, stream=self.stream)
        self._loss_img = cuda.device_array(n, np.float32, stream=self.stream)
        self._correct_img = cuda.device_array(n, np.int32, stream=self.stream)
        self._capacity = n

    def _forward(self, w: dict, images, start: int, n: int) -> None:
        st = self.stream
        _k_conv_pool[_blocks(n * self.filters * CELLS), TPB, st](
            images, start, n, w["conv_w"], w["conv_b"], self._pooled, self._arg
        )
        _k_fc_forward[n, TPB, st](self._pooled, w["fc_w"], w["fc_b"], self._logits)

    def _step(self, w: dict, gconv, images, labels, start: int, n: int, step: int) -> None:
        st = self.stream
        self._ensure_capacity(n)
        self._forward(w, images, start, n)
        _k_softmax[_blocks(n), TPB, st](
            self._logits, labels, start, n, self._dlogits, self._loss_img, self._correct_img
        )
        _k_step_stats[1, TPB, st](
            self._loss_img, self._correct_img, n, self._step_loss, self._step_correct, step
        )
        slices = max(1, -(-n * CELLS // (TPB * CELLS_PER_THREAD)))
        _k_conv_grad[(self.filters, slices), TPB, st](
            images, start, n, self._arg, self._dlogits, w["fc_w"], gconv
        )
        _k_fc_update[_blocks(CLASSES * CELLS * self.filters + CLASSES), TPB, st](
            self._pooled, self._dlogits, n, self.lr, w["fc_w"], w["fc_b"]
        )
        _k_conv_update[_blocks(self.filters * (TAPS + 1)), TPB, st](
            self.lr, gconv, w["conv_w"], w["conv_b"]
        )

    def warm_up(self) -> None:
        """JIT-compile every kernel with one step on device copies of the weights."""
        w = self._upload(self.params())
        gconv = cuda.to_device(np.zeros((self.filters, TAPS + 1), np.float32), self.stream)
        images = cuda.to_device(np.zeros((2, IMAGE, IMAGE), np.uint8), self.stream)
        labels = cuda.to_device(np.zeros(2, np.int64), self.stream)
        saved = self._step_loss, self._step_correct
        self._step_loss = cuda.device_array(1, np.float32, stream=self.stream)
        self._step_correct = cuda.device_array(1, np.int32, stream=self.stream)
        self._step(w, gconv, images, labels, 0, 2, 0)
        self._step_loss, self._step_correct = saved
        self.stream.synchronize()

    def load_epoch(self, images: np.ndarray, labels: np.ndarray) -> None:
        st = self.stream
        self._images = cuda.to_device(np.ascontiguousarray(images, np.uint8), st)
        self._labels = cuda.to_device(np.ascontiguousarray(labels, np.int64), st)
        n = len(labels)  # at most one step per image
        if self._step_loss.shape[0] < n:
            self._step_loss = cuda.device_array(n, np.float32, stream=st)
            self._step_correct = cuda.device_array(n, np.int32, stream=st)
        self._step_index = 0

    def _grow_step_stats(self) -> None:
        """Double the per-step statistics on the device, keeping the steps so far."""
        st, n = self.stream, self._step_index
        loss = cuda.device_array(2 * max(1, n), np.float32, stream=st)
        correct = cuda.device_array(2 * max(1, n), np.int32, stream=st)
        if n:
            loss[:n].copy_to_device(self._step_loss[:n], stream=st)
            correct[:n].copy_to_device(self._step_correct[:n], stream=st)
        self._step_loss, self._step_correct = loss, correct

    def train_step(self, start: int, stop: int) -> None:
        if not 0 <= start < stop <= self._labels.shape[0]:
            raise ValueError(
                f"step [{start}, {stop}) is outside the {self._labels.shape[0]} images"
            )
        if self._step_index >= self._step_loss.shape[0]:
            self._grow_step_stats()  # a bench cycling through the rows for longer than an epoch
        self._step(
            self._w, self._gconv, self._images, self._labels, start, stop - start,
            self._step_index,
        )  # fmt: skip
        self._step_index += 1

    def epoch_stats(self) -> tuple[np.ndarray, np.ndarray]:
        n = self._step_index
        losses = self._step_loss[:n].copy_to_host(stream=self.stream)
        correct = self._step_correct[:n].copy_to_host(stream=self.stream)
        self.stream.synchronize()
        return losses.astype(np.float64), correct.astype(np.int64)

    def predict(self, images: np.ndarray, chunk: int = 4096) -> np.ndarray:
        out = np.empty((images.shape[0], CLASSES), np.float32)
        for lo in range(0, images.shape[0], chunk):
            part = np.ascontiguousarray(images[lo : lo + chunk], np.uint8)
            n = part.shape[0]
            self._ensure_capacity(n)
            self._forward(self._w, cuda.to_device(part, self.stream), 0, n)
            logits = self._logits[:n].copy_to_host(stream=self.stream)
            self.stream.synchronize()  # the copy is asynchronous
            out[lo : lo + n] = logits
        return out

    def params(self) -> Params:
        f = self.filters
        host = {k: v.copy_to_host(stream=self.stream) for k, v in self._w.items()}
        self.stream.synchronize()
        return {
            "conv_w": host["conv_w"].reshape(f, 1, KERNEL, KERNEL).copy(),
            "conv_b": host["conv_b"],
            "fc_w": host["fc_w"],
            "fc_b": host["fc_b"],
        }
