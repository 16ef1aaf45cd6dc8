"""The sequential reference engine: readable, vectorised NumPy (im2col + matmul), one thread.

`forward_backward` is the whole maths of one SGD step and doubles as the float64 model that the
finite-difference gradient check tests; the other engines are tested against this engine.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from cnnpar.nets.tinycnn import spec
from cnnpar.nets.tinycnn.spec import CELLS, CONV, KERNEL, POOL, Params


def _im2col(x: np.ndarray) -> np.ndarray:
    """x (B, 28, 28) → patches (B, 26·26, 9): patch[b, i·26+j, k·3+l] = x[b, i+k, j+l]."""
    b = x.shape[0]
    windows = sliding_window_view(x, (KERNEL, KERNEL), axis=(1, 2))  # (B, 26, 26, 3, 3) view
    return windows.reshape(b, CONV * CONV, KERNEL * KERNEL)  # copies once


def _forward(params: Params, x: np.ndarray) -> dict[str, np.ndarray]:
    """Forward pass keeping what the backward pass needs. x (B, 28, 28) float."""
    b = x.shape[0]
    f = params["conv_b"].shape[0]
    patches = _im2col(x)  # (B, 676, 9)
    conv = patches @ params["conv_w"].reshape(f, KERNEL * KERNEL).T + params["conv_b"]  # (B,676,F)
    act = np.maximum(conv, 0)
    # Group each 2×2 window's four values on the last axis in row-major order, so argmax
    # returns the first maximum, as torch's MaxPool2d does.
    windows = (
        act.reshape(b, POOL, 2, POOL, 2, f).transpose(0, 5, 1, 3, 2, 4).reshape(b, f, CELLS, 4)
    )
    arg = windows.argmax(axis=-1)  # (B, F, 169)
    pooled = np.take_along_axis(windows, arg[..., None], axis=-1)[..., 0]  # (B, F, 169)
    flat = pooled.reshape(b, f * CELLS)  # C order over (F, 13, 13)
    logits = flat @ params["fc_w"].T + params["fc_b"]  # (B, 10)
    return {"patches": patches, "arg": arg, "pooled": pooled, "flat": flat, "logits": logits}


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def loss_and_grads(params: Params, x: np.ndarray, y: np.ndarray) -> tuple[float, Params, int]:
    """Batch-mean softmax cross-entropy, its gradient for every parameter, and #correct.

    x (B, 28, 28) float in [0, 1] of the parameters' dtype, y (B,) class indices.
    """
    b = x.shape[0]
    f = params["conv_b"].shape[0]
    cache = _forward(params, x)
    logp = log_softmax(cache["logits"])
    rows = np.arange(b)
    loss = float(-logp[rows, y].mean())
    correct = int((cache["logits"].argmax(axis=1) == y).sum())

    dlogits = np.exp(logp)  # softmax
    dlogits[rows, y] -= 1
    dlogits /= b  # (B, 10): the loss is a batch mean
    grads = {
        "fc_w": dlogits.T @ cache["flat"],  # (10, 169F)
        "fc_b": dlogits.sum(axis=0),
    }
    dpooled = (dlogits @ params["fc_w"]).reshape(b, f, CELLS)
    # ReLU gate: a pooled value of 0 means the winning conv output was <= 0.
    dpooled *= cache["pooled"] > 0
    dwindows = np.zeros((b, f, CELLS, 4), dtype=x.dtype)
    np.put_along_axis(dwindows, cache["arg"][..., None], dpooled[..., None], axis=-1)
    # Undo the window grouping: (B, F, 13, 13, 2, 2) → (B, 26·26, F).
    dconv = (
        dwindows.reshape(b, f, POOL, POOL, 2, 2)
        .transpose(0, 2, 4, 3, 5, 1)
        .reshape(b, CONV * CONV, f)
    )
    grads["conv_w"] = np.einsum("bpf,bpk->fk", dconv, cache["patches"]).reshape(
        f, 1, KERNEL, KERNEL
    )
    grads["conv_b"] = dconv.sum(axis=(0, 1))
    return loss, grads, correct


class NumpyEngine:
    """One thread, whole-batch array operations; the reference every engine must match."""

    def __init__(self, params: Params, lr: float, dtype: type = np.float32) -> None:
        spec.check_params(params)
        self._params = spec.copy_params(params, dtype)
        self.lr = dtype(lr)
        self.dtype = dtype
        self.threads = 1
        self._images = np.empty((0, spec.IMAGE, spec.IMAGE), np.uint8)
        self._labels = np.empty(0, np.int64)
        self._losses: list[float] = []
        self._correct: list[int] = []

    @classmethod
    def from_params(cls, params: Params, *, lr: float, threads: int = 1) -> NumpyEngine:
        return cls(params, lr)  # the reference is sequential by definition

    def warm_up(self) -> None:
        """Nothing to compile."""

    def load_epoch(self, images: np.ndarray, labels: np.ndarray) -> None:
        self._images = images
        self._labels = labels.astype(np.int64)
        self._losses, self._correct = [], []

    def train_step(self, start: int, stop: int) -> None:
        x = spec.to_float(self._images[start:stop], self.dtype)
        loss, grads, correct = loss_and_grads(self._params, x, self._labels[start:stop])
        for key in spec.PARAM_KEYS:
            self._params[key] -= self.lr * grads[key]
        self._losses.append(loss)
        self._correct.append(correct)

    def epoch_stats(self) -> tuple[np.ndarray, np.ndarray]:
        return np.array(self._losses), np.array(self._correct, dtype=np.int64)

    def predict(self, images: np.ndarray) -> np.ndarray:
        return _forward(self._params, spec.to_float(images, self.dtype))["logits"]

    def params(self) -> Params:
        return spec.copy_params(self._params)
