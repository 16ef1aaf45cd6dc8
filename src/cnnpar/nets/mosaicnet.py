"""MosaicNet: the mosaic-classification CNN of the original study.

x (B, 1, 28, 28)
conv5x5 1→16 pad 2 → ReLU → maxpool 2   (B, 16, 14, 14)
conv5x5 16→32 pad 2 → ReLU → maxpool 2  (B, 32, 7, 7)
flatten (B, 1568) → FC 512 → ReLU → FC 256 → ReLU → FC 10   logits (B, 10)
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path

import torch
from torch import nn

from cnnpar.errors import CnnparError
from cnnpar.nets import traffic

N_PARAMETERS = 950_474
# Multiply-adds × 2 per image of the layers that do them (ReLU and pooling are negligible):
# (output cells × input taps) per layer, each a (fan-in × fan-out) product.
CONV1_FLOPS = 2 * 28 * 28 * 16 * (1 * 5 * 5)
CONV2_FLOPS = 2 * 14 * 14 * 32 * (16 * 5 * 5)
FC_FLOPS = 2 * (1568 * 512 + 512 * 256 + 256 * 10)
FORWARD_FLOPS = CONV1_FLOPS + CONV2_FLOPS + FC_FLOPS  # ≈ 7.5 MFLOP
# Floats one image's tensors take in a forward pass, layer by layer (input; conv1, ReLU, pool;
# conv2, ReLU, pool; FC 512, ReLU, FC 256, ReLU, FC 10): what memory estimates scale with the
# batch. A training step keeps them all for the backward pass and adds as many gradients.
ACTIVATION_FLOATS = (
    28 * 28
    + 2 * 16 * 28 * 28
    + 16 * 14 * 14
    + 2 * 32 * 14 * 14
    + 32 * 7 * 7
    + 2 * 512
    + 2 * 256
    + 10
)


def flops_per_image(training: bool) -> int:
    """Forward FLOPs, or for a training step forward + backward: every layer's weight gradient
    costs its forward FLOPs again and so does its input gradient, except conv1's, whose input
    (the image) needs none and which torch does not compute (2.8% of the 3× estimate)."""
    if not training:
        return FORWARD_FLOPS
    return 3 * FORWARD_FLOPS - CONV1_FLOPS


FLOPS_PER_IMAGE = flops_per_image(training=False)

# Floats per image crossing a layer boundary, for the traffic model (cnnpar.nets.traffic): x
# (1, 28, 28); each conv block's pooled output (16, 14, 14) and (32, 7, 7), ReLU and pooling
# fused into the conv; each FC layer's output (512), (256) and the logits (10).
LAYER_FLOATS = (28 * 28, 16 * 14 * 14, 32 * 7 * 7, 512, 256, 10)


def bytes_per_image(batch_size: int, training: bool) -> float:
    """Compulsory bytes per image of an inference batch or a training step (Adam) of
    `batch_size` images, float32 (`traffic.bytes_per_image` over LAYER_FLOATS): with P =
    950,474 parameters,

    inference  4 · (11,738 + P / B)      the image read, the five inner outputs written and
                                         read, the logits written; the weights read once
    training   4 · (28,968 + 8P / B)     forward, loss and backward (each layer reads its input
                                         and its output gradient and writes its input's
                                         gradient, but conv1); weights, gradients and Adam's
                                         two moments read and written once per step

    e.g. inference at B = 256: 4 · (11,738 + 950,474 / 256) = 61,803.15625 bytes.
    """
    return traffic.bytes_per_image(LAYER_FLOATS, N_PARAMETERS, batch_size, training, adam=training)


def working_set_bytes(batch_size: int, training: bool) -> int:
    """Bytes one batch or step touches (`traffic.working_set_bytes`, Adam when training)."""
    return traffic.working_set_bytes(
        LAYER_FLOATS, N_PARAMETERS, batch_size, training, adam=training
    )


class WeightsError(CnnparError):
    """A weights file is missing or does not fit the architecture."""


class MosaicNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(32 * 7 * 7, 512),
            nn.ReLU(),
            nn.Linear(512, 256),
            nn.ReLU(),
            nn.Linear(256, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


# Checkpoint dicts that wrap a state_dict under one of these keys are unwrapped.
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")


def _shape(value: object) -> str:
    return str(tuple(value.shape)) if isinstance(value, torch.Tensor) else type(value).__name__


def _unwrap(state: dict, path: Path) -> tuple[dict, str | None]:
    """`state`, or the state_dict a training checkpoint holds under a WRAPPER_KEYS key."""
    if state and all(isinstance(v, torch.Tensor) for v in state.values()):
        return state, None
    for key in WRAPPER_KEYS:
        inner = state.get(key)
        if isinstance(inner, dict) and inner:
            return inner, f"took its {key!r} entry"
    keys = ", ".join(repr(k) for k in list(state)[:3]) or "nothing"
    raise WeightsError(
        f"{path} holds a dict of {keys}, not a state_dict of tensors; save model.state_dict()"
    )


def _by_position(state: dict, expected: dict[str, torch.Tensor], path: Path) -> dict:
    """`state`'s tensors under MosaicNet's names, if they match MosaicNet's layer by layer in
    order and shape (another project's copy of the same net names its layers differently);
    else WeightsError naming the first mismatch."""
    found = list(state.items())
    for i, (name, tensor) in enumerate(expected.items()):
        if i >= len(found):
            raise WeightsError(
                f"{path} does not fit MosaicNet: it has {len(found)} tensors, MosaicNet "
                f"{len(expected)}; the first missing is {name} {tuple(tensor.shape)}"
            )
        key, value = found[i]
        if not isinstance(value, torch.Tensor) or value.shape != tensor.shape:
            raise WeightsError(
                f"{path} does not fit MosaicNet: tensor {i + 1} {key!r} is {_shape(value)}, "
                f"MosaicNet's {name} is {tuple(tensor.shape)}"
            )
    if len(found) > len(expected):
        raise WeightsError(
            f"{path} does not fit MosaicNet: it has {len(found)} tensors, MosaicNet "
            f"{len(expected)}; the first extra is {found[len(expected)][0]!r}"
        )
    return {name: value for name, (_, value) in zip(expected, found, strict=True)}


def load_weights(path: str | os.PathLike[str], device: str = "cpu") -> tuple[MosaicNet, str | None]:
    """MosaicNet with the weights in `path`, in eval mode on `device`, and a one-line note when
    they were not stored under MosaicNet's own names (else None).

    Accepted: a state_dict as `cnnpar train --model mosaicnet` saves it; a checkpoint dict
    wrapping one under "state_dict", "model_state_dict" or "model"; and a state_dict whose
    tensors match MosaicNet's layer by layer in order and shape under other names (the original
    project's `self.network = nn.Sequential(...)` saves network.0.weight ... network.11.bias),
    mapped by position. A whole pickled model (torch.save(model)) is refused: unpickling it
    could run arbitrary code. Raises WeightsError, naming the first mismatch, for anything else.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(
            f"weights file {path} not found; train one with `cnnpar train --model mosaicnet`"
        )
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's safe unpickler names the first class it refused: "GLOBAL module.Class".
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        if found is None:
            raise WeightsError(f"{path} is not a torch state_dict (UnpicklingError)") from None
        raise WeightsError(
            f"{path} holds a pickled {found[1]} (a whole model saved with torch.save(model)?), "
            "which cnnpar does not load since unpickling can run any code; save "
            "model.state_dict() instead"
        ) from None
    except Exception as err:  # torch raises several unrelated types for a bad file
        raise WeightsError(f"{path} is not a torch state_dict ({type(err).__name__})") from None
    if not isinstance(state, dict):
        raise WeightsError(f"{path} holds a {type(state).__name__}, expected a state_dict")
    state, unwrapped = _unwrap(state, path)
    model = MosaicNet()
    expected = model.state_dict()
    notes = [unwrapped] if unwrapped else []
    if set(state) == set(expected):
        state = {name: state[name] for name in expected}  # its own names: never by position
    first = next(iter(state))
    if list(state) != list(expected):
        notes.append(
            f"mapped its {len(state)} tensors by position to MosaicNet's names "
            f"({first} -> {next(iter(expected))}, ...; shapes match layer by layer)"
        )
    model.load_state_dict(_by_position(state, expected, path))
    note = f"weights {path}: {' and '.join(notes)}" if notes else None
    return model.to(device).eval(), note


def load_mosaicnet(path: str | os.PathLike[str], device: str = "cpu") -> MosaicNet:
    """MosaicNet with the weights in `path` (see `load_weights`), in eval mode on `device`."""
    return load_weights(path, device)[0]
