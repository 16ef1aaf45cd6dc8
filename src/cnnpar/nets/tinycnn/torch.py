"""The baseline a user would otherwise pick: torch's Conv2d, MaxPool2d and Linear, plain SGD.

`torch` runs on the CPU with torch's own intra-op threads (set by the caller through
`timing.set_threads`); `torch-cuda` runs the same module on the first CUDA device, with the
epoch's images and the per-step losses kept on the device until `epoch_stats`.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
from torch import nn

from cnnpar.nets.tinycnn import spec
from cnnpar.nets.tinycnn.spec import CLASSES, KERNEL, POOL, Params


class TinyCNN(nn.Module):
    def __init__(self, filters: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, filters, kernel_size=KERNEL)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(POOL * POOL * filters, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x (B, 1, 28, 28) → logits (B, 10)
        return self.fc(self.pool(torch.relu(self.conv(x))).flatten(1))


def _to_input(images_u8: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 28, 28) → float32 (B, 1, 28, 28) / 255, exactly as spec.to_float."""
    return images_u8.unsqueeze(1).to(torch.float32) / 255.0


class TorchEngine:
    name: ClassVar[str] = "torch"
    parallel: ClassVar[bool] = True
    device: ClassVar[str] = "cpu"

    def __init__(self, params: Params, lr: float, threads: int) -> None:
        filters = spec.check_params(params)
        self.threads = torch.get_num_threads() if self.device == "cpu" else threads
        self.lr = float(lr)
        self.model = TinyCNN(filters).to(self.device)
        self._load_params(self.model, params)
        # Plain SGD, no momentum or weight decay: p -= lr * grad.
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=self.lr)
        self._images = torch.empty((0, spec.IMAGE, spec.IMAGE), dtype=torch.uint8)
        self._labels = torch.empty(0, dtype=torch.int64)
        self._losses = torch.empty(0, dtype=torch.float32)
        self._correct = torch.empty(0, dtype=torch.int64)
        self._step_index = 0

    @classmethod
    def from_params(cls, params: Params, *, lr: float, threads: int = 1) -> TorchEngine:
        return cls(params, lr, threads)

    def _load_params(self, model: TinyCNN, params: Params) -> None:
        with torch.no_grad():
            for name, key in (
                ("conv.weight", "conv_w"),
                ("conv.bias", "conv_b"),
                ("fc.weight", "fc_w"),
                ("fc.bias", "fc_b"),
            ):
                model.get_parameter(name).copy_(torch.from_numpy(np.asarray(params[key])))

    def _sync(self) -> None:
        if self.device != "cpu":
            torch.cuda.synchronize()

    def warm_up(self) -> None:
        """One step on a throwaway copy: cuDNN/oneDNN pick their kernels, the weights don't move."""
        spare = TinyCNN(self.model.conv.out_channels).to(self.device)
        spare.load_state_dict(self.model.state_dict())
        optimizer = torch.optim.SGD(spare.parameters(), lr=self.lr)
        x = torch.zeros((2, spec.IMAGE, spec.IMAGE), dtype=torch.uint8, device=self.device)
        loss = nn.functional.cross_entropy(
            spare(_to_input(x)), torch.zeros(2, dtype=torch.int64, device=self.device)
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        self._sync()

    def load_epoch(self, images: np.ndarray, labels: np.ndarray) -> None:
        # A copy (np.array) because MNIST arrays are read-only and torch wants writable memory.
        self._images = torch.from_numpy(np.array(images, dtype=np.uint8)).to(self.device)
        self._labels = torch.from_numpy(np.array(labels, dtype=np.int64)).to(self.device)
        # At most one step per image: room for every step's statistics, on the device.
        n = len(labels)
        self._losses = torch.zeros(n, dtype=torch.float32, device=self.device)
        self._correct = torch.zeros(n, dtype=torch.int64, device=self.device)
        self._step_index = 0

    def train_step(self, start: int, stop: int) -> None:
        x = _to_input(self._images[start:stop])
        y = self._labels[start:stop]
        logits = self.model(x)
        loss = nn.functional.cross_entropy(logits, y)  # batch mean
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        i = self._step_index
        self._losses[i] = loss.detach()
        self._correct[i] = (logits.detach().argmax(dim=1) == y).sum()
        self._step_index = i + 1

    def epoch_stats(self) -> tuple[np.ndarray, np.ndarray]:
        n = self._step_index
        losses = self._losses[:n].cpu().numpy().astype(np.float64)
        correct = self._correct[:n].cpu().numpy()
        return losses, correct

    @torch.inference_mode()
    def predict(self, images: np.ndarray) -> np.ndarray:
        x = _to_input(torch.from_numpy(np.array(images, dtype=np.uint8)).to(self.device))
        return self.model(x).cpu().numpy()

    def params(self) -> Params:
        m = self.model
        return {
            "conv_w": m.conv.weight.detach().cpu().numpy().copy(),
            "conv_b": m.conv.bias.detach().cpu().numpy().copy(),
            "fc_w": m.fc.weight.detach().cpu().numpy().copy(),
            "fc_b": m.fc.bias.detach().cpu().numpy().copy(),
        }


class TorchCudaEngine(TorchEngine):
    name: ClassVar[str] = "torch-cuda"
    parallel: ClassVar[bool] = False  # host threads do not matter to the device
    device: ClassVar[str] = "cuda"
