"""Parallel CPU engine: numba, SIMD across pooled cells, images in groups of four.

One pooled cell (i, j) reads a 4×4 input patch; its four 3×3 windows are the four conv outputs
that the 2×2 max-pool takes. The vector (SIMD) axis is the cells: one filter at a time, 16
neighbouring cells per 512-bit vector, so the vector is full whatever F is. For that, each image
is split once into eight planes in which every patch value of every cell is a unit-stride load:

    planes (8, 192) float32   planes[4a+s, r·13+c] = x[2r+a, 2c+s]      a ∈ {0, 1}, s ∈ 0..3
    patch value (u, v) of cell m = i·13+j  is  planes[4·(u mod 2) + v, m + 13·(u div 2)]

Each filter's 169 cells are padded to SPAN = 176 (whole vectors); padding cells are 0, carry no
gradient, and meet zero FC weights. Weights, internally (`params()` converts back):

    wc (F, 9)  bc (F,)  wf (10, F·176) filter-major as torch flattens, 0 at padding  bf (10,)

Per step, one parallel region gives each thread a contiguous chunk of the batch, taken four
images at a time (GROUP): planes and conv → max-pool → ReLU (pooled values kept per image,
winning window as int8, -1 where ReLU gates the gradient off), the FC layer of the four in one
pass over wf, softmax, their gradients at the pooled outputs in a second pass (four images per
pass quarter the L2 traffic for wf, which does not fit L1), then the conv weight gradient.
Each thread leaves its share of the step's gradient, and at the start of the next step adds
every thread's share, in thread order, to its own replica of the weights: the replicas stay
bitwise equal, the weights never move between cores, and a step needs one barrier, not two.
No races, no atomics; the result does not depend on scheduling; a step allocates nothing.
Every array starts on a cache line (`_zeros`), so no vector load straddles two.

Vector width: LLVM targets 256-bit vectors on most AVX-512 CPUs unless told otherwise;
`cnnpar.measure.numba_settings` lets it use 512-bit ones there (the record says which).
"""

from __future__ import annotations

import numpy as np

from cnnpar.measure import numba_settings
from cnnpar.nets.tinycnn import spec
from cnnpar.nets.tinycnn.spec import CELLS, CLASSES, IMAGE, KERNEL, POOL, Params

numba = numba_settings.load()  # numba's first import goes through here: it sets the CPU target
njit, prange = numba.njit, numba.prange

# Re-association lets LLVM vectorise the sums; contraction gives FMAs. No nnan/ninf: the
# softmax must stay exact about infinities.
FAST = {"reassoc", "contract", "nsz"}
# Steps per compiled call: long enough that Python's per-call cost vanishes, short enough that
# the progress bar still moves (64 steps at B=32 is about 10 ms).
QUEUE_STEPS = 64
SPAN = 176  # pooled cells per filter: 169, padded to whole 16-float vectors
PLANE = 192  # floats per plane: 14 rows of 13, padded so reads one row down stay inside
TAPS = KERNEL * KERNEL
LINE = 64  # bytes per cache line: rows and arrays start on one (see `_zeros`)
GROUP = 4  # images whose FC passes share one read of wf
# Threads up to which each keeps its own replica of the weights. A replica saves the second
# barrier of a step and the traffic of shared weights, but its update reads every other
# thread's share of the FC gradient, 56 KB each at F=8. Per thread and step at 2 threads that
# is 56 KB against 73 KB for a shared copy (the half of wf the other thread updated, and its
# images' pooled values in this thread's columns); at 4 threads, 168 KB against 76 KB.
REPLICATE_UP_TO = 2
FC_TILE = 128  # FC columns per tile of the FC gradient: a class's tile is 512 bytes
# x = pixel / 255 by table: the same quotients as a division, without a division per pixel.
BY255 = np.arange(256, dtype=np.float32) / np.float32(255.0)
# Cache compiled code where numba can write (a read-only install and home has no cache
# locator, and `cache=CACHE` would fail at import); off if nowhere is writable.
CACHE = numba_settings.prepare_cache(__file__)


@njit(fastmath=FAST, cache=CACHE)
def _planes(image: np.ndarray, planes: np.ndarray) -> None:
    """uint8 image (28, 28) → planes (8, 192) float32, row by row of the image."""
    for i in range(IMAGE):
        a = i & 1
        base = (i >> 1) * POOL
        row = image[i]
        p0, p1, p2, p3 = planes[4 * a], planes[4 * a + 1], planes[4 * a + 2], planes[4 * a + 3]
        for c in range(POOL):
            p0[base + c] = BY255[row[2 * c]]
            p1[base + c] = BY255[row[2 * c + 1]]
            p2[base + c] = BY255[row[2 * c + 2]]
            p3[base + c] = BY255[row[2 * c + 3]]


@njit(fastmath=FAST, cache=CACHE)
def _conv_pool(planes, wc, bc, pooled, arg) -> None:
    """conv 3×3 → max-pool 2×2 → ReLU of one image: pooled (F·176,) float32 and arg (F·176,)
    int8, the winning window 0..3 (row-major, first maximum wins, as torch) or -1 where ReLU
    gates the gradient off."""
    q0, q1, q2, q3 = planes[0], planes[1], planes[2], planes[3]  # patch rows 0 and 2
    q4, q5, q6, q7 = planes[4], planes[5], planes[6], planes[7]  # patch rows 1 and 3
    for f in range(bc.shape[0]):
        w0, w1, w2 = wc[f, 0], wc[f, 1], wc[f, 2]
        w3, w4, w5 = wc[f, 3], wc[f, 4], wc[f, 5]
        w6, w7, w8 = wc[f, 6], wc[f, 7], wc[f, 8]
        b = bc[f]
        p = pooled[f * SPAN : (f + 1) * SPAN]
        g = arg[f * SPAN : (f + 1) * SPAN]
        for m in range(SPAN):  # SIMD over cells
            n = m + POOL
            x00, x01, x02, x03 = q0[m], q1[m], q2[m], q3[m]
            x10, x11, x12, x13 = q4[m], q5[m], q6[m], q7[m]
            x20, x21, x22, x23 = q0[n], q1[n], q2[n], q3[n]
            x30, x31, x32, x33 = q4[n], q5[n], q6[n], q7[n]
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
            # Argmax by selects, so the loop stays SIMD; ties go to the earlier window.
            up = a1 > a0
            m01 = a1 if up else a0
            k01 = np.int8(1) if up else np.int8(0)
            up = a3 > a2
            m23 = a3 if up else a2
            k23 = np.int8(3) if up else np.int8(2)
            up = m23 > m01
            best = m23 if up else m01
            k = k23 if up else k01
            on = best > 0
            p[m] = best if on else np.float32(0.0)
            g[m] = k if on else np.int8(-1)
        for m in range(CELLS, SPAN):
            p[m] = 0
            g[m] = -1


@njit(fastmath=FAST, cache=CACHE)
def _conv_backward(planes, arg, dpool, gwc, gbc, n_f: int) -> None:
    """gwc[:F·9] and gbc[:F] += the conv weight and bias gradients of one image: each pooled
    gradient routed to its winning window and correlated with that window's 3×3 input. Written
    densely over the four windows (masked), ten running sums per filter, so it stays SIMD."""
    q0, q1, q2, q3 = planes[0], planes[1], planes[2], planes[3]
    q4, q5, q6, q7 = planes[4], planes[5], planes[6], planes[7]
    zero = np.float32(0.0)
    for f in range(n_f):
        g = arg[f * SPAN : (f + 1) * SPAN]
        d = dpool[f * SPAN : (f + 1) * SPAN]
        s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = s8 = sb = zero
        for m in range(SPAN):  # SIMD over cells
            n = m + POOL
            x00, x01, x02, x03 = q0[m], q1[m], q2[m], q3[m]
            x10, x11, x12, x13 = q4[m], q5[m], q6[m], q7[m]
            x20, x21, x22, x23 = q0[n], q1[n], q2[n], q3[n]
            x30, x31, x32, x33 = q4[n], q5[n], q6[n], q7[n]
            a = g[m]
            v = d[m]
            g0 = v if a == 0 else zero
            g1 = v if a == 1 else zero
            g2 = v if a == 2 else zero
            g3 = v if a == 3 else zero
            sb += v if a >= 0 else zero
            s0 += g0 * x00 + g1 * x01 + g2 * x10 + g3 * x11
            s1 += g0 * x01 + g1 * x02 + g2 * x11 + g3 * x12
            s2 += g0 * x02 + g1 * x03 + g2 * x12 + g3 * x13
            s3 += g0 * x10 + g1 * x11 + g2 * x20 + g3 * x21
            s4 += g0 * x11 + g1 * x12 + g2 * x21 + g3 * x22
            s5 += g0 * x12 + g1 * x13 + g2 * x22 + g3 * x23
            s6 += g0 * x20 + g1 * x21 + g2 * x30 + g3 * x31
            s7 += g0 * x21 + g1 * x22 + g2 * x31 + g3 * x32
            s8 += g0 * x22 + g1 * x23 + g2 * x32 + g3 * x33
        o = f * TAPS
        gwc[o] += s0
        gwc[o + 1] += s1
        gwc[o + 2] += s2
        gwc[o + 3] += s3
        gwc[o + 4] += s4
        gwc[o + 5] += s5
        gwc[o + 6] += s6
        gwc[o + 7] += s7
        gwc[o + 8] += s8
        gbc[f] += sb


@njit(fastmath=FAST, cache=CACHE)
def _fc_forward(p0, p1, p2, p3, wf, bf, l0, l1, l2, l3) -> None:
    """Logits l0..l3 (10,) of four images' pooled rows p0..p3, wf read once for all four.

    Five classes at a time are spelled out, so each (image, class) sum has its own vector
    accumulator: twenty independent chains keep both FMA units busy, and nine loads feed twenty
    FMAs.
    """
    z = np.float32(0.0)
    for c in range(0, CLASSES, 5):
        w0, w1, w2, w3, w4 = wf[c], wf[c + 1], wf[c + 2], wf[c + 3], wf[c + 4]
        a0 = a1 = a2 = a3 = a4 = b0 = b1 = b2 = b3 = b4 = z
        d0 = d1 = d2 = d3 = d4 = e0 = e1 = e2 = e3 = e4 = z
        for j in range(wf.shape[1]):
            x, y, u, v = p0[j], p1[j], p2[j], p3[j]
            w = w0[j]
            a0, b0, d0, e0 = a0 + w * x, b0 + w * y, d0 + w * u, e0 + w * v
            w = w1[j]
            a1, b1, d1, e1 = a1 + w * x, b1 + w * y, d1 + w * u, e1 + w * v
            w = w2[j]
            a2, b2, d2, e2 = a2 + w * x, b2 + w * y, d2 + w * u, e2 + w * v
            w = w3[j]
            a3, b3, d3, e3 = a3 + w * x, b3 + w * y, d3 + w * u, e3 + w * v
            w = w4[j]
            a4, b4, d4, e4 = a4 + w * x, b4 + w * y, d4 + w * u, e4 + w * v
        sums = ((a0, b0, d0, e0), (a1, b1, d1, e1), (a2, b2, d2, e2), (a3, b3, d3, e3),
                (a4, b4, d4, e4))  # fmt: skip
        for k, (a, b, d, e) in enumerate(sums):
            l0[c + k], l1[c + k] = bf[c + k] + a, bf[c + k] + b
            l2[c + k], l3[c + k] = bf[c + k] + d, bf[c + k] + e


@njit(fastmath=FAST, cache=CACHE)
def _softmax_xent(logits, y: int, scale: np.float32, dlogits):
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
def _fc_dpool(wf, d0, d1, d2, d3, o0, o1, o2, o3) -> None:
    """o_i = wfᵀ · d_i for four images (the gradients at their pooled outputs, from the old
    wf), wf read once for all four: five classes per pass, twenty weights held in registers."""
    for c in range(0, CLASSES, 5):
        a0, a1, a2, a3, a4 = d0[c], d0[c + 1], d0[c + 2], d0[c + 3], d0[c + 4]
        b0, b1, b2, b3, b4 = d1[c], d1[c + 1], d1[c + 2], d1[c + 3], d1[c + 4]
        e0, e1, e2, e3, e4 = d2[c], d2[c + 1], d2[c + 2], d2[c + 3], d2[c + 4]
        g0, g1, g2, g3, g4 = d3[c], d3[c + 1], d3[c + 2], d3[c + 3], d3[c + 4]
        w0, w1, w2, w3, w4 = wf[c], wf[c + 1], wf[c + 2], wf[c + 3], wf[c + 4]
        first = c == 0
        for j in range(wf.shape[1]):
            v0, v1, v2, v3, v4 = w0[j], w1[j], w2[j], w3[j], w4[j]
            s0 = a0 * v0 + a1 * v1 + a2 * v2 + a3 * v3 + a4 * v4
            s1 = b0 * v0 + b1 * v1 + b2 * v2 + b3 * v3 + b4 * v4
            s2 = e0 * v0 + e1 * v1 + e2 * v2 + e3 * v3 + e4 * v4
            s3 = g0 * v0 + g1 * v1 + g2 * v2 + g3 * v3 + g4 * v4
            if first:
                o0[j], o1[j], o2[j], o3[j] = s0, s1, s2, s3
            else:
                o0[j], o1[j], o2[j], o3[j] = o0[j] + s0, o1[j] + s1, o2[j] + s2, o3[j] + s3


@njit(fastmath=FAST, cache=CACHE)
def _fc_grad(pooled, dlogits, n: int, g, lo: int, hi: int, lr, w) -> None:
    """g[:, lo:hi] = Σ_b dlogits[b] ⊗ pooled[b, lo:hi] over the first n rows (g (10, F·176)):
    those images' share of the FC weight gradient, in columns [lo, hi). Unless lr is 0, also
    w[:, lo:hi] -= lr · g[:, lo:hi], tile by tile while the tile is in L1.

    Tiled over columns so a class's tile of g stays in L1 while the images stream by, eight
    images per pass over it. The loop order matters: with the class loop innermost LLVM
    vectorises across classes with gathers, many times slower than this unit-stride loop.
    """
    for j0 in range(lo, hi, FC_TILE):
        j1 = min(j0 + FC_TILE, hi)
        for c in range(CLASSES):
            a = g[c, j0:j1]
            a[:] = 0
            b = 0
            while b + 8 <= n:
                d0, d1, d2, d3 = (
                    dlogits[b, c],
                    dlogits[b + 1, c],
                    dlogits[b + 2, c],
                    dlogits[b + 3, c],
                )
                d4, d5, d6, d7 = (
                    dlogits[b + 4, c],
                    dlogits[b + 5, c],
                    dlogits[b + 6, c],
                    dlogits[b + 7, c],
                )
                r0, r1, r2, r3 = (
                    pooled[b, j0:j1],
                    pooled[b + 1, j0:j1],
                    pooled[b + 2, j0:j1],
                    pooled[b + 3, j0:j1],
                )
                r4, r5, r6, r7 = (
                    pooled[b + 4, j0:j1],
                    pooled[b + 5, j0:j1],
                    pooled[b + 6, j0:j1],
                    pooled[b + 7, j0:j1],
                )
                for j in range(j1 - j0):
                    a[j] += (d0 * r0[j] + d1 * r1[j] + d2 * r2[j] + d3 * r3[j]) + (
                        d4 * r4[j] + d5 * r5[j] + d6 * r6[j] + d7 * r7[j]
                    )
                b += 8
            while b < n:
                d = dlogits[b, c]
                row = pooled[b, j0:j1]
                for j in range(j1 - j0):
                    a[j] += d * row[j]
                b += 1
            if lr != 0:
                wr = w[c, j0:j1]
                for j in range(j1 - j0):
                    wr[j] -= lr * a[j]


@njit(fastmath=FAST, cache=CACHE)
def _apply_fc(lr, w, shares, row) -> None:
    """w (10, F·176) -= lr · the sum of shares (T, 10, F·176) in thread order, so that replicas
    updated from the same shares stay bitwise equal; row (≥F·176,) is scratch for T > 2."""
    n_threads = shares.shape[0]
    n_in = w.shape[1]
    for c in range(CLASSES):
        wr = w[c]
        g0 = shares[0, c]
        if n_threads == 1:
            for j in range(n_in):
                wr[j] -= lr * g0[j]
        elif n_threads == 2:
            g1 = shares[1, c]
            for j in range(n_in):
                wr[j] -= lr * (g0[j] + g1[j])
        else:
            row[:n_in] = g0
            for u in range(1, n_threads):
                gu = shares[u, c]
                for j in range(n_in):
                    row[j] += gu[j]
            for j in range(n_in):
                wr[j] -= lr * row[j]


@njit(fastmath=FAST, cache=CACHE)
def _apply_small(lr, wc, bc, bf, gwc, gbc, gbf) -> None:
    """The conv weights wc (F, 9), conv biases bc (F,) and FC biases bf (10,) -= lr · the sum of
    the threads' shares gwc (T, ≥F·9), gbc (T, ≥F), gbf (T, ≥10), in thread order."""
    n_threads = gwc.shape[0]
    n_f = bc.shape[0]
    for k in range(n_f * TAPS):
        total = gwc[0, k]
        for u in range(1, n_threads):
            total += gwc[u, k]
        wc[k // TAPS, k % TAPS] -= lr * total
    for f in range(n_f):
        total = gbc[0, f]
        for u in range(1, n_threads):
            total += gbc[u, f]
        bc[f] -= lr * total
    for c in range(CLASSES):
        total = gbf[0, c]
        for u in range(1, n_threads):
            total += gbf[u, c]
        bf[c] -= lr * total


@njit(parallel=True, fastmath=FAST, cache=CACHE)
def _train_steps(
    images, labels, bounds, lr,  # data, steps (S, 2) [start, stop)
    wc, bc, wf, bf,  # the weights: one replica per thread, or one shared (R = T or 1, ...)
    pooled, dlogits,  # per-image rows of a batch, (≥B, padded)
    planes, arg, dpool, logits, row, stats,  # per thread (T, ...), padded
    gwc, gbc, gwf, gbf,  # each thread's share of a step's gradient, by step parity (2, T, ...)
    losses, correct,  # out, (S,): batch-mean loss and #correct of each step
):  # fmt: skip
    """SGD steps on images[start:stop] for each row of bounds, in order, in one compiled call.

    Each thread takes a contiguous chunk of the batch, four images at a time, and leaves its
    share of the step's gradient (alternating between two buffers by step parity, so no thread
    overwrites a share another may still be reading). Then, with one replica of the weights per
    thread (R = T), each thread adds every share to its own replica at the start of the next
    step: one parallel region, one barrier, per step, and one more region for the last step's
    update. With one shared copy (R = 1), a second region per step updates it, each thread
    computing the FC gradient of its slice of columns over the whole batch.
    """
    n_threads = planes.shape[0]
    replicated = wf.shape[0] == n_threads  # one thread: its copy is its replica
    n_f = bc.shape[1]
    n_in = wf.shape[2]
    n_steps = bounds.shape[0]
    for s in range(n_steps + 1):
        for t in prange(n_threads):
            if s > 0 and replicated:
                p = (s - 1) % 2
                _apply_fc(lr, wf[t], gwf[p], row[t])
                _apply_small(lr, wc[t], bc[t], bf[t], gwc[p], gbc[p], gbf[p])
            if s == n_steps:
                continue
            q = s % 2
            start = bounds[s, 0]
            n = bounds[s, 1] - start
            scale = np.float32(1.0) / np.float32(n)  # the loss is a batch mean
            # The copy of the weights thread t reads: its own, or the shared one.
            wct, bct = (wc[t], bc[t]) if replicated else (wc[0], bc[0])
            wft, bft = (wf[t], bf[t]) if replicated else (wf[0], bf[0])
            gwc[q, t, :] = 0
            gbc[q, t, :] = 0
            loss_sum = 0.0
            n_correct = 0
            first = n * t // n_threads
            stop = n * (t + 1) // n_threads
            for b0 in range(first, stop, GROUP):
                k = min(GROUP, stop - b0)  # images in this group; a short one repeats its last
                r0, r1, r2, r3 = b0, b0 + min(1, k - 1), b0 + min(2, k - 1), b0 + min(3, k - 1)
                for i in range(k):
                    _planes(images[start + b0 + i], planes[t, i])
                    _conv_pool(planes[t, i], wct, bct, pooled[b0 + i], arg[t, i])
                lg = logits[t]
                _fc_forward(pooled[r0], pooled[r1], pooled[r2], pooled[r3], wft, bft,
                            lg[0], lg[1], lg[2], lg[3])  # fmt: skip
                for i in range(k):
                    loss, ok = _softmax_xent(lg[i], labels[start + b0 + i], scale, dlogits[b0 + i])
                    loss_sum += loss
                    n_correct += ok
                dp = dpool[t]
                _fc_dpool(wft, dlogits[r0], dlogits[r1], dlogits[r2], dlogits[r3],
                          dp[0], dp[1], dp[2], dp[3])  # fmt: skip
                for i in range(k):
                    _conv_backward(planes[t, i], arg[t, i], dp[i], gwc[q, t], gbc[q, t], n_f)
            for c in range(CLASSES):
                total = np.float32(0.0)
                for b in range(first, stop):
                    total += dlogits[b, c]
                gbf[q, t, c] = total
            if replicated:
                share = gwf[q, t]  # lr 0: the share only, the replicas update next step
                _fc_grad(pooled[first:stop], dlogits[first:stop], stop - first, share, 0, n_in,
                         0, wft)  # fmt: skip
            stats[t, 0] = loss_sum
            stats[t, 1] = n_correct
        if s == n_steps:
            break
        if not replicated:
            q = s % 2
            n = bounds[s, 1] - bounds[s, 0]
            for t in prange(n_threads):
                # Slices on 16-float (cache line) bounds: no line is written by two threads.
                lo = (n_in * t // n_threads) // 16 * 16
                hi = n_in if t == n_threads - 1 else (n_in * (t + 1) // n_threads) // 16 * 16
                _fc_grad(pooled, dlogits, n, gwf[q, t], lo, hi, lr, wf[0])
                if t == 0:
                    _apply_small(lr, wc[0], bc[0], bf[0], gwc[q], gbc[q], gbf[q])
        loss_total = 0.0
        correct_total = 0
        for t in range(n_threads):  # fixed order: the loss does not depend on scheduling
            loss_total += stats[t, 0]
            correct_total += int(stats[t, 1])
        losses[s] = loss_total / (bounds[s, 1] - bounds[s, 0])
        correct[s] = correct_total


@njit(parallel=True, fastmath=FAST, cache=CACHE)
def _predict(images, wc, bc, wf, bf, planes, pooled, arg, out) -> None:
    """Logits of every image into out (n, 10), images split into one chunk per thread."""
    n_threads = planes.shape[0]
    n = images.shape[0]
    for t in prange(n_threads):
        stop = n * (t + 1) // n_threads
        p = pooled[t]
        for i in range(n * t // n_threads, stop, GROUP):
            k = min(GROUP, stop - i)
            for q in range(k):
                _planes(images[i + q], planes[t, q])
                _conv_pool(planes[t, q], wc, bc, p[q], arg[t, q])
            o1, o2, o3 = i + min(1, k - 1), i + min(2, k - 1), i + k - 1
            _fc_forward(p[0], p[min(1, k - 1)], p[min(2, k - 1)], p[min(3, k - 1)], wf, bf,
                        out[i], out[o1], out[o2], out[o3])  # fmt: skip


def _zeros(shape: int | tuple[int, ...], dtype: type = np.float32) -> np.ndarray:
    """Zeros whose first element starts a 64-byte cache line.

    NumPy aligns to 16 bytes, so a 512-bit load from an unaligned row straddles two lines and
    costs two L1 accesses; the FC passes, two vector loads per FMA, ran at two thirds of their
    aligned speed. Every row length here is a whole number of lines, so every row is aligned.
    """
    shape = (shape,) if isinstance(shape, int) else shape
    size = int(np.prod(shape)) * np.dtype(dtype).itemsize
    raw = np.zeros(size + LINE, np.uint8)
    start = -raw.ctypes.data % LINE
    return raw[start : start + size].view(dtype).reshape(shape)


def to_internal(params: Params) -> dict[str, np.ndarray]:
    """Torch layout → the engine's (filter rows of 9 taps; FC columns padded to 176 per
    filter, zero at the padding), every array cache-line aligned."""
    f = spec.check_params(params)
    wf = _zeros((CLASSES, f, SPAN))
    wf[..., :CELLS] = params["fc_w"].reshape(CLASSES, f, CELLS)
    w = {"wc": _zeros((f, TAPS)), "bc": _zeros(f), "wf": wf.reshape(CLASSES, f * SPAN)}
    w["wc"][:] = params["conv_w"].reshape(f, TAPS)
    w["bc"][:] = params["conv_b"]
    w["bf"] = _zeros(CLASSES)
    w["bf"][:] = params["fc_b"]
    return w


def from_internal(w: dict[str, np.ndarray]) -> Params:
    """The engine's layout → torch layout, as fresh float32 arrays."""
    f = w["bc"].shape[0]
    fc_w = w["wf"].reshape(CLASSES, f, SPAN)[..., :CELLS]
    return {
        "conv_w": w["wc"].reshape(f, 1, KERNEL, KERNEL).copy(),
        "conv_b": w["bc"].copy(),
        "fc_w": np.ascontiguousarray(fc_w).reshape(CLASSES, f * CELLS),
        "fc_b": w["bf"].copy(),
    }


def _per_thread(n_t: int, n: int, dtype: type) -> np.ndarray:
    """(T, row) aligned zeros with row ≥ n rounded up to whole cache lines, so every row starts
    a line and two threads' rows never share one."""
    per_line = LINE // np.dtype(dtype).itemsize
    row = -(-n // per_line) * per_line
    return _zeros((n_t, row), dtype)


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
        replicas = self.threads if self.threads <= REPLICATE_UP_TO else 1
        self._w = self._replicas(to_internal(params), replicas)
        self._scratch = self._allocate(self.threads, int(self._w["bc"].shape[1]))
        self._batch = self._allocate_batch(0)
        self._images = np.empty((0, IMAGE, IMAGE), np.uint8)
        self._labels = np.empty(0, np.int64)
        self._queue: list[tuple[int, int]] = []
        self._losses: list[np.ndarray] = []
        self._correct: list[np.ndarray] = []

    @staticmethod
    def _replicas(w: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
        """n aligned copies of each weight array, (n, ...): one per thread (each reads and
        updates only its own, so no weight line moves between cores), or one shared."""
        out = {k: _zeros((n, *v.shape)) for k, v in w.items()}
        for k, v in w.items():
            out[k][:] = v
        return out

    @staticmethod
    def _allocate(n_t: int, f: int) -> dict[str, np.ndarray]:
        """Per-thread scratch: a group's planes, winning windows, pooled rows (for predict),
        pooled gradients and logits; a row for summing FC gradients; each thread's share of
        the conv, FC and FC bias gradients by step parity (2, T, ...)."""

        def shares(n: int) -> np.ndarray:  # (2, T, padded n)
            return _per_thread(2 * n_t, n, np.float32).reshape(2, n_t, -1)

        def group(n: int, dtype: type) -> np.ndarray:  # (T, GROUP, padded n)
            return _per_thread(GROUP * n_t, n, dtype).reshape(n_t, GROUP, -1)

        return {
            "planes": _zeros((n_t, GROUP, 8, PLANE)),  # 24 KB a thread: whole lines
            "pooled": group(SPAN * f, np.float32),
            "arg": group(SPAN * f, np.int8),
            "dpool": group(SPAN * f, np.float32),
            "logits": group(CLASSES, np.float32),
            "row": _per_thread(n_t, SPAN * f, np.float32),
            "stats": _per_thread(n_t, 2, np.float64),
            "gwc": shares(TAPS * f),
            "gbc": shares(f),
            "gwf": _zeros((2, n_t, CLASSES, SPAN * f)),
            "gbf": shares(CLASSES),
        }

    def _allocate_batch(self, n: int) -> dict[str, np.ndarray]:
        """Per-image rows for a batch of n; grown only when a larger batch first arrives."""
        k = SPAN * int(self._w["bc"].shape[1])
        return {
            "pooled": _per_thread(n, k, np.float32),
            "dlogits": _per_thread(n, CLASSES, np.float32),
        }

    @classmethod
    def from_params(cls, params: Params, *, lr: float, threads: int = 1) -> NumbaEngine:
        return cls(params, lr, threads)

    def _run(self, w, images, labels, bounds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Run the steps in bounds (S, 2) on the replicas w in place; (losses, #correct), one
        per step."""
        largest = int((bounds[:, 1] - bounds[:, 0]).max())
        if largest > self._batch["pooled"].shape[0]:
            self._batch = self._allocate_batch(largest)
        s, bt = self._scratch, self._batch
        losses = np.empty(len(bounds), np.float64)
        correct = np.empty(len(bounds), np.int64)
        _train_steps(
            images, labels, bounds, self.lr, w["wc"], w["bc"], w["wf"], w["bf"],
            bt["pooled"], bt["dlogits"],
            s["planes"], s["arg"], s["dpool"], s["logits"], s["row"], s["stats"],
            s["gwc"], s["gbc"], s["gwf"], s["gbf"],
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
        out = np.zeros((2, CLASSES), np.float32)
        _predict(images, w["wc"][0], w["bc"][0], w["wf"][0], w["bf"][0],
                 s["planes"], s["pooled"], s["arg"], out)  # fmt: skip

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
        _predict(_readonly(images, np.uint8), w["wc"][0], w["bc"][0], w["wf"][0], w["bf"][0],
                 s["planes"], s["pooled"], s["arg"], out)  # fmt: skip
        return out

    def params(self) -> Params:
        self._flush()
        return from_internal({k: v[0] for k, v in self._w.items()})
