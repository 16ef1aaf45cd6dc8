"""Compulsory memory traffic of a network processed layer by layer: the roofline's byte count.

A step (training) or batch (inference) runs each layer over all B images before the next, as
every engine here does. When a layer's output cannot stay in cache until its consumer runs
(the case this model counts), each tensor that crosses a layer boundary is written once by its
producer and read once by each consumer; what happens inside a layer (ReLU, max-pooling, the
softmax and loss) is fused into it and moves nothing. With per-image tensor sizes
t_0 (the image), t_1 … t_L (each layer's output, t_L the logits), in floats:

- forward: read t_0; write and read each t_i, 0 < i < L; write t_L;
- training adds: the loss reads t_L and writes its gradient g_L; layer i's backward reads its
  input t_{i-1} (for its weight gradient) and its output gradient g_i, and writes g_{i-1}
  except for the first layer (the image needs no gradient). A max-pool's winners are
  recomputed from the layer's input, which the backward reads anyway (storing them would add
  one index per pooled cell);
- per step, amortised over its B images: the P parameters are read once (inference); training
  reads and writes them once (the update) and writes and reads their gradients once, 4P, and
  Adam also reads and writes its two moments, 4P more.

Labels (one integer per image) are left out. Everything is float32: 4 bytes a float.

The working set of a step (what must stay in cache for none of this to reach memory) is every
tensor above for all B images at once, plus the parameters with their gradients and optimizer
state: `working_set_bytes`.
"""

from __future__ import annotations

from collections.abc import Sequence

FLOAT_BYTES = 4  # float32


def activation_floats(sizes: Sequence[int], training: bool) -> int:
    """Floats per image moved between layers; `sizes` = (t_0, t_1, ..., t_L) per image."""
    if len(sizes) < 2:
        raise ValueError(f"a network has an input and at least one layer (got sizes {sizes})")
    inner = sum(sizes[1:-1])
    forward = sizes[0] + 2 * inner + sizes[-1]
    if not training:
        return forward
    loss = 2 * sizes[-1]  # read the logits, write their gradient
    backward = sum(sizes[:-1]) + sum(sizes[1:]) + inner  # inputs, output gradients, g_{i-1}
    return forward + loss + backward


def parameter_floats(parameters: int, training: bool, adam: bool = False) -> int:
    """Floats of parameter traffic per step: P read (inference); training 4P (weights read and
    written, gradients written and read), Adam 4P more (two moments read and written)."""
    if not training:
        return parameters
    return (8 if adam else 4) * parameters


def bytes_per_image(
    sizes: Sequence[int], parameters: int, batch_size: int, training: bool, adam: bool = False
) -> float:
    """Compulsory bytes per image of a step over `batch_size` images (module docstring)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 (got {batch_size})")
    per_step = parameter_floats(parameters, training, adam) / batch_size
    return FLOAT_BYTES * (activation_floats(sizes, training) + per_step)


def working_set_bytes(
    sizes: Sequence[int], parameters: int, batch_size: int, training: bool, adam: bool = False
) -> int:
    """Distinct bytes one step touches: every tensor t_i (and, training, every gradient g_i,
    i > 0) for the whole batch, plus the parameters (training: with gradients, and Adam's two
    moments)."""
    tensors = sum(sizes) + (sum(sizes[1:]) if training else 0)
    copies = (4 if adam else 2) if training else 1
    return FLOAT_BYTES * (batch_size * tensors + copies * parameters)
