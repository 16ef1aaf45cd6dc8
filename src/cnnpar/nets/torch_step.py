"""One torch training step behind the engine protocol, shared by TinyCNN and MosaicNet.

`TorchTrainer` holds an `nn.Module` and its optimizer on one device. The epoch's digits go to
the device once (`load_epoch`); each `train_step(start, stop)` trains on a row range of them,
and the per-step loss and hit count stay on the device until `epoch_stats`, so a GPU run never
waits for the host mid-epoch.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable

import numpy as np
import torch
from torch import nn

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]


def to_input(pixels_u8: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 28, 28) → float32 (B, 1, 28, 28) in [0, 1], exactly as spec.to_float."""
    return pixels_u8.unsqueeze(1).to(torch.float32) / 255.0


class TorchTrainer:
    def __init__(
        self, model: nn.Module, make_optimizer: OptimizerFactory, device: str, threads: int
    ) -> None:
        self.device = device
        self.model = model.to(device)
        self.make_optimizer = make_optimizer
        self.optimizer = make_optimizer(self.model.parameters())
        # Host threads mean nothing to a GPU run; on the CPU report what torch really uses.
        self.threads = torch.get_num_threads() if device == "cpu" else threads
        self._images = torch.empty((0, 28, 28), dtype=torch.uint8)
        self._labels = torch.empty(0, dtype=torch.int64)
        self._losses = torch.empty(0, dtype=torch.float32)
        self._correct = torch.empty(0, dtype=torch.int64)
        self._step_index = 0

    def _sync(self) -> None:
        if self.device != "cpu":
            torch.cuda.synchronize()

    def _device_u8(self, images: np.ndarray) -> torch.Tensor:
        # A copy (np.array): MNIST arrays are read-only and torch wants writable memory.
        return torch.from_numpy(np.array(images, dtype=np.uint8)).to(self.device)

    def warm_up(self) -> None:
        """One step on a throwaway copy: cuDNN/oneDNN pick their kernels, the weights stay put."""
        spare = copy.deepcopy(self.model)
        optimizer = self.make_optimizer(spare.parameters())
        x = to_input(self._device_u8(np.zeros((2, 28, 28), np.uint8)))
        y = torch.zeros(2, dtype=torch.int64, device=self.device)
        loss = nn.functional.cross_entropy(spare(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        self._sync()

    def load_epoch(self, images: np.ndarray, labels: np.ndarray) -> None:
        self.model.train()
        self._images = self._device_u8(images)
        self._labels = torch.from_numpy(np.array(labels, dtype=np.int64)).to(self.device)
        # Room for one step per image, the most an epoch takes; a bench that cycles through the
        # rows for longer grows it (`_grow`).
        n = max(1, len(labels))
        self._losses = torch.zeros(n, dtype=torch.float32, device=self.device)
        self._correct = torch.zeros(n, dtype=torch.int64, device=self.device)
        self._step_index = 0

    def _grow(self) -> None:
        self._losses = torch.cat([self._losses, torch.zeros_like(self._losses)])
        self._correct = torch.cat([self._correct, torch.zeros_like(self._correct)])

    def _claim_step(self, start: int, stop: int) -> int:
        """The index of the step on rows [start, stop), with room for its statistics. Raises
        ValueError for rows outside the epoch."""
        if not 0 <= start < stop <= len(self._labels):
            raise ValueError(f"step [{start}, {stop}) is outside the {len(self._labels)} images")
        i = self._step_index
        if i == len(self._losses):
            self._grow()
        return i

    def train_step(self, start: int, stop: int) -> None:
        i = self._claim_step(start, stop)
        x = to_input(self._images[start:stop])
        y = self._labels[start:stop]
        logits = self.model(x)
        loss = nn.functional.cross_entropy(logits, y)  # batch mean
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self._losses[i] = loss.detach()
        self._correct[i] = (logits.detach().argmax(dim=1) == y).sum()
        self._step_index = i + 1

    def epoch_stats(self) -> tuple[np.ndarray, np.ndarray]:
        n = self._step_index
        losses = self._losses[:n].cpu().numpy().astype(np.float64)
        correct = self._correct[:n].cpu().numpy()
        return losses, correct

    def model_state(self) -> dict[str, torch.Tensor]:
        """The trained module's state_dict (what `cnnpar train` saves as model.pt)."""
        return self.model.state_dict()

    def predict(self, images: np.ndarray) -> np.ndarray:
        self.model.eval()
        with torch.inference_mode():
            return self.model(to_input(self._device_u8(images))).float().cpu().numpy()
