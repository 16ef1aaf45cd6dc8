"""The baseline a user would otherwise pick: torch's Conv2d, MaxPool2d and Linear, plain SGD.

`torch` runs on the CPU with torch's own intra-op threads (set by the caller through
`measure.threads.set_threads`); `torch-cuda` runs the same module on the first CUDA device, with the
epoch's images and the per-step losses kept on the device until `epoch_stats`.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
from torch import nn

from cnnpar.nets.tinycnn import spec
from cnnpar.nets.tinycnn.spec import CLASSES, KERNEL, POOL, Params
from cnnpar.nets.torch_step import OptimizerFactory, TorchTrainer


class TinyCNN(nn.Module):
    def __init__(self, filters: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, filters, kernel_size=KERNEL)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(POOL * POOL * filters, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x (B, 1, 28, 28) → logits (B, 10)
        return self.fc(self.pool(torch.relu(self.conv(x))).flatten(1))


class TorchEngine(TorchTrainer):
    """TinyCNN with plain SGD (no momentum or weight decay: p -= lr * grad)."""

    device_name: ClassVar[str] = "cpu"

    def __init__(self, params: Params, lr: float, threads: int) -> None:
        filters = spec.check_params(params)
        model = TinyCNN(filters)
        with torch.no_grad():
            for name, key in (
                ("conv.weight", "conv_w"),
                ("conv.bias", "conv_b"),
                ("fc.weight", "fc_w"),
                ("fc.bias", "fc_b"),
            ):
                model.get_parameter(name).copy_(torch.from_numpy(np.asarray(params[key])))
        self.lr = float(lr)
        super().__init__(
            model,
            lambda parameters: torch.optim.SGD(parameters, lr=self.lr),
            self.device_name,
            threads,
        )

    @classmethod
    def from_params(cls, params: Params, *, lr: float, threads: int = 1) -> TorchEngine:
        return cls(params, lr, threads)

    @classmethod
    def from_module(
        cls, model: nn.Module, make_optimizer: OptimizerFactory, *, threads: int = 1
    ) -> TorchTrainer:
        """Any torch module (MosaicNet) trained by this engine's step on its device."""
        return TorchTrainer(model, make_optimizer, cls.device_name, threads)

    def params(self) -> Params:
        m = self.model
        return {
            "conv_w": m.conv.weight.detach().cpu().numpy().copy(),
            "conv_b": m.conv.bias.detach().cpu().numpy().copy(),
            "fc_w": m.fc.weight.detach().cpu().numpy().copy(),
            "fc_b": m.fc.bias.detach().cpu().numpy().copy(),
        }


class TorchCudaEngine(TorchEngine):
    device_name: ClassVar[str] = "cuda"
