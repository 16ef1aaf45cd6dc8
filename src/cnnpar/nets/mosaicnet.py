"""MosaicNet: the mosaic-classification CNN of the original study.

x (B, 1, 28, 28)
conv5x5 1→16 pad 2 → ReLU → maxpool 2   (B, 16, 14, 14)
conv5x5 16→32 pad 2 → ReLU → maxpool 2  (B, 32, 7, 7)
flatten (B, 1568) → FC 512 → ReLU → FC 256 → ReLU → FC 10   logits (B, 10)
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from cnnpar.errors import CnnparError

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


def load_mosaicnet(path: str | os.PathLike[str], device: str = "cpu") -> MosaicNet:
    """Build MosaicNet and load a state_dict saved by `cnnpar train --model mosaicnet`."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(
            f"weights file {path} not found; train one with `cnnpar train --model mosaicnet`"
        )
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # torch raises several unrelated types for a bad file
        raise WeightsError(f"{path} is not a torch state_dict ({type(err).__name__})") from None
    model = MosaicNet()
    if not isinstance(state, dict):
        raise WeightsError(f"{path} holds a {type(state).__name__}, expected a state_dict")
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        detail = first[1].strip() if len(first) > 1 else first[0]
        raise WeightsError(f"{path} does not fit MosaicNet: {detail}") from None
    return model.to(device).eval()
