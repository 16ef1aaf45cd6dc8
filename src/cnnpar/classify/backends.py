"""MosaicNet prepared for inference on one backend (see `registry.BACKENDS`)."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable

import torch
from torch import nn

from cnnpar.classify.config import ClassifyError
from cnnpar.nets.mosaicnet import MosaicNet

Net = Callable[[torch.Tensor], torch.Tensor]  # x (B, 1, 28, 28) float32 → logits (B, 10)


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


def prepare(model: MosaicNet, backend: str) -> Net:
    """Wrap an eval-mode MosaicNet for one backend."""
    if backend == "eager":
        return model
    if backend == "channels-last":
        return _ChannelsLast(model)
    if backend == "mkldnn":
        return _MkldnnMosaicNet(model)
    if backend == "jit":
        # Freezing folds the weights into the graph as constants and optimize_for_inference
        # swaps in prepacked oneDNN convolutions. TorchScript is deprecated in favour of
        # torch.compile, which here took ~30 s to compile and ran slower.
        with warnings.catch_warnings(), torch.inference_mode():
            warnings.simplefilter("ignore", FutureWarning)
            return torch.jit.optimize_for_inference(torch.jit.script(model))
    raise ClassifyError(f"unknown backend {backend!r}")


def warm_up(net: Net, batch_size: int, device: str) -> None:
    """Run a few batches so oneDNN primitives, TorchScript profiling and the allocator are
    settled before the clock starts (TorchScript specialises on the second or third call)."""
    x = torch.zeros(batch_size, 1, 28, 28, device=device)
    with torch.inference_mode():
        for _ in range(3):
            net(x)
