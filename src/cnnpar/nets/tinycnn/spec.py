"""TinyCNN(F): the one network every training engine implements, exactly.

x (B, 1, 28, 28) float32 = pixel / 255
conv 3×3, F filters, stride 1, no padding   (B, F, 26, 26)   conv_w (F, 1, 3, 3), conv_b (F,)
ReLU, max-pool 2×2 stride 2                  (B, F, 13, 13)
flatten, C order over (F, 13, 13)            (B, 169·F)
fully connected                              (B, 10)          fc_w (10, 169·F), fc_b (10,)
softmax cross-entropy averaged over the batch; plain SGD  p -= lr · ∂(mean loss)/∂p

Conventions are torch's Conv2d / MaxPool2d / Linear, including max-pool ties: the first
maximum in row-major window order wins. Everything here is shared by all engines, so the engines
differ only in how they compute, never in what: the initial weights and the order of the data
come from this module and from the seed, never from an engine's own random generator.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from cnnpar.nets import traffic

IMAGE = 28  # input side
KERNEL = 3  # conv kernel side
CONV = IMAGE - KERNEL + 1  # 26: conv output side (valid)
POOL = CONV // 2  # 13: pooled side
CELLS = POOL * POOL  # 169 pooled cells per filter
CLASSES = 10
PARAM_KEYS = ("conv_w", "conv_b", "fc_w", "fc_b")

Params = dict[str, np.ndarray]


def param_shapes(filters: int) -> dict[str, tuple[int, ...]]:
    return {
        "conv_w": (filters, 1, KERNEL, KERNEL),
        "conv_b": (filters,),
        "fc_w": (CLASSES, CELLS * filters),
        "fc_b": (CLASSES,),
    }


def n_parameters(filters: int) -> int:
    return sum(int(np.prod(shape)) for shape in param_shapes(filters).values())


def init_params(filters: int, seed: int) -> Params:
    """He-normal weights (std √(2 / fan_in)) and zero biases, float32, from `seed` alone."""
    if filters < 1:
        raise ValueError(f"filters must be >= 1 (got {filters})")
    # A named stream per purpose, so adding another draw elsewhere never shifts these weights.
    rng = np.random.default_rng([seed, 0])
    fan_conv = KERNEL * KERNEL
    fan_fc = CELLS * filters
    shapes = param_shapes(filters)
    return {
        "conv_w": (rng.standard_normal(shapes["conv_w"]) * np.sqrt(2.0 / fan_conv)).astype(
            np.float32
        ),
        "conv_b": np.zeros(shapes["conv_b"], np.float32),
        "fc_w": (rng.standard_normal(shapes["fc_w"]) * np.sqrt(2.0 / fan_fc)).astype(np.float32),
        "fc_b": np.zeros(shapes["fc_b"], np.float32),
    }


def check_params(params: Params) -> int:
    """Validate keys, shapes and dtype; return F."""
    missing = [k for k in PARAM_KEYS if k not in params]
    if missing:
        raise ValueError(f"TinyCNN params lack {missing}")
    filters = int(params["conv_b"].shape[0])
    for key, shape in param_shapes(filters).items():
        if tuple(params[key].shape) != shape:
            raise ValueError(f"{key} has shape {params[key].shape}, expected {shape}")
    return filters


def copy_params(params: Params, dtype: type = np.float32) -> Params:
    return {k: np.array(params[k], dtype=dtype, copy=True) for k in PARAM_KEYS}


def to_float(images_u8: np.ndarray, dtype: type = np.float32) -> np.ndarray:
    """uint8 (B, 28, 28) → (B, 28, 28) in [0, 1]."""
    return images_u8.astype(dtype) / dtype(255)


# --- FLOPs --------------------------------------------------------------------------------
# Counted the dense way (every multiply-add is 2 FLOPs), as a dense library computes them:
# the conv weight gradient is a full correlation over all 26×26 positions, even though max-pool
# leaves only one position in four with a non-zero gradient. The input gradient of the conv is
# never needed (x is data). ReLU, pooling, softmax and bias terms are negligible and left out.


def conv_flops(filters: int) -> int:
    return 2 * CONV * CONV * KERNEL * KERNEL * filters  # 12,168·F


def fc_flops(filters: int) -> int:
    return 2 * CLASSES * CELLS * filters  # 3,380·F


def flops_per_image(filters: int, training: bool = True) -> int:
    """Forward only (inference), or forward + backward (training: conv dW, fc dW, fc dx)."""
    forward = conv_flops(filters) + fc_flops(filters)
    if not training:
        return forward
    return forward + conv_flops(filters) + 2 * fc_flops(filters)


# --- bytes moved ---------------------------------------------------------------------------
# The compulsory traffic of a step taken layer by layer (cnnpar.nets.traffic): the conv layer
# (conv, ReLU and max-pool fused: its (B, F, 26, 26) output is pooled inside it) and the fully
# connected layer (with softmax and loss) exchange only the pooled activations.


def layer_floats(filters: int) -> tuple[int, int, int]:
    """Floats per image crossing a layer boundary: x (1, 28, 28), pooled (F, 13, 13), logits
    (10)."""
    return (IMAGE * IMAGE, CELLS * filters, CLASSES)


def bytes_per_image(filters: int, batch_size: int, training: bool = True) -> float:
    """Compulsory bytes per image of a step (plain SGD) or inference batch of `batch_size`
    images, float32; with x = 784, p = 169·F and logits 10 floats per image and P =
    n_parameters(F) = 1,700·F + 10:

    inference  4 · (x + 2p + 10 + P / B)
               x read; p written by the conv layer and read by the FC layer; logits written;
               the weights read once per batch
    training   4 · (2x + 5p + 40 + 4P / B)
               x read by the conv's forward and again by its weight gradient; p written, read by
               the FC forward and again by its weight gradient; its gradient written by the FC
               backward and read by the conv's; logits written and read, their gradient written
               and read; weights read and written, gradients written and read, once per step

    e.g. F = 8, B = 32, training: 4 · (1,568 + 6,760 + 40 + 4 · 13,610 / 32) = 40,277 bytes.
    """
    return traffic.bytes_per_image(
        layer_floats(filters), n_parameters(filters), batch_size, training
    )


def working_set_bytes(filters: int, batch_size: int, training: bool = True) -> int:
    """Bytes one step touches (`traffic.working_set_bytes`): x, p and logits of the batch (and
    training, the gradients of p and the logits), the weights (and their gradients)."""
    return traffic.working_set_bytes(
        layer_floats(filters), n_parameters(filters), batch_size, training
    )


# --- data order ---------------------------------------------------------------------------


def epoch_order(n: int, epoch: int, seed: int, shuffle: bool) -> np.ndarray:
    """Indices of the first `n` training images in the order epoch `epoch` (0-based) visits them.

    Without shuffling this is dataset order. With it, a permutation drawn from (seed, epoch),
    so every engine sees exactly the same batches.
    """
    if not shuffle:
        return np.arange(n, dtype=np.int64)
    return np.random.default_rng([seed, 1, epoch]).permutation(n).astype(np.int64)


def batch_bounds(n: int, batch_size: int) -> Iterator[tuple[int, int]]:
    """[start, stop) of consecutive batches over n rows; the last one may be smaller."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 (got {batch_size})")
    for start in range(0, n, batch_size):
        yield start, min(start + batch_size, n)


def n_steps(n: int, batch_size: int) -> int:
    return -(-n // batch_size)
