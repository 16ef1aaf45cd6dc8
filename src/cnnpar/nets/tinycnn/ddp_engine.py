"""Data-parallel training with PyTorch's DistributedDataParallel, one engine per rank.

Every rank holds the whole epoch (the same seeded order) and, for each step's batch
[start, stop), trains on its shard: a contiguous slice, rank r of N taking
B // N + (r < B % N) rows, so shards differ by at most one row and may be empty (B < N).

DDP averages gradients over the N ranks, so each rank backpropagates its shard's summed loss
scaled by N / B:  (1/N) Σ_r (N / B) Σ_{i ∈ shard r} ℓ_i = (1/B) Σ_i ℓ_i, the gradient of the
whole batch's mean loss, whatever the shard sizes. An empty shard still runs the forward and
backward pass (zero gradients), so it joins the all-reduce and no rank waits for it.

Communication time is taken by a DDP communication hook that wraps torch's default all-reduce
hook (`default_hooks.allreduce_hook`): per step, from the first bucket's launch to the last
bucket's completion (the future's callback), which includes waiting for slower ranks. The
step's compute time is the rest of its wall time. With TinyCNN the gradients fit one bucket, so
the two do not overlap; MosaicNet's buckets may overlap the tail of the backward pass.

Needs an initialised default process group (cnnpar.ranks); `threads` is this rank's own.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.parallel import DistributedDataParallel

from cnnpar.nets.tinycnn.spec import Params
from cnnpar.nets.tinycnn.torch_engine import TinyCNN, TorchEngine
from cnnpar.nets.torch_step import OptimizerFactory, TorchTrainer, to_input


def shard(start: int, stop: int, rank: int, world_size: int) -> tuple[int, int]:
    """Rank `rank`'s contiguous slice of rows [start, stop) (possibly empty)."""
    size = stop - start
    base, extra = divmod(size, world_size)
    lo = start + rank * base + min(rank, extra)
    return lo, lo + base + (rank < extra)


class CommTimer:
    """State of the timing hook: the span of this step's all-reduces, in seconds."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.first: float | None = None
        self.last: float | None = None

    def take(self) -> float:
        """Seconds from the first launch to the last completion since the previous take."""
        with self.lock:
            span = 0.0 if self.first is None or self.last is None else self.last - self.first
            self.first = self.last = None
        return max(0.0, span)


def timed_allreduce(state: CommTimer, bucket: dist.GradBucket) -> torch.futures.Future:
    """torch's default all-reduce hook (sum, then divide by the world size), timed."""
    started = time.perf_counter()
    with state.lock:
        if state.first is None:
            state.first = started
    future = default_hooks.allreduce_hook(None, bucket)

    def done(fut: torch.futures.Future) -> torch.Tensor:
        finished = time.perf_counter()
        with state.lock:
            state.last = finished if state.last is None else max(state.last, finished)
        return fut.value()

    return future.then(done)


# DDP checks the hook's annotations as objects; this module's are strings (postponed).
timed_allreduce.__annotations__ = {
    "state": CommTimer,
    "bucket": dist.GradBucket,
    "return": torch.futures.Future[torch.Tensor],
}


class DdpTrainer(TorchTrainer):
    """Any torch module trained data-parallel; the engine protocol of cnnpar.nets.tinycnn."""

    def __init__(self, model: nn.Module, make_optimizer: OptimizerFactory, threads: int) -> None:
        if not dist.is_initialized():
            raise RuntimeError("the torch-ddp engine runs inside ranks started by cnnpar.ranks")
        super().__init__(model, make_optimizer, "cpu", threads)
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.ddp = DistributedDataParallel(self.model)  # broadcasts rank 0's weights
        self.comm = CommTimer()
        self.ddp.register_comm_hook(self.comm, timed_allreduce)
        self.step_compute_s: list[float] = []
        self.step_comm_s: list[float] = []
        self._sums = torch.empty(0, dtype=torch.float64)  # per step: this shard's summed loss
        self._sizes = torch.empty(0, dtype=torch.float64)  # per step: the whole batch's size

    def load_epoch(self, images: np.ndarray, labels: np.ndarray) -> None:
        super().load_epoch(images, labels)
        self._sums = torch.zeros(len(self._losses), dtype=torch.float64)
        self._sizes = torch.ones(len(self._losses), dtype=torch.float64)

    def train_step(self, start: int, stop: int) -> None:
        if not 0 <= start < stop <= len(self._labels):
            raise ValueError(f"step [{start}, {stop}) is outside the {len(self._labels)} images")
        t0 = time.perf_counter()
        i = self._step_index
        if i == len(self._losses):
            self._grow()
            self._sums = torch.cat([self._sums, torch.zeros_like(self._sums)])
            self._sizes = torch.cat([self._sizes, torch.ones_like(self._sizes)])
        lo, hi = shard(start, stop, self.rank, self.world_size)
        x = to_input(self._images[lo:hi])
        y = self._labels[lo:hi]
        logits = self.ddp(x)
        loss_sum = nn.functional.cross_entropy(logits, y, reduction="sum")
        self.optimizer.zero_grad(set_to_none=True)
        (loss_sum * (self.world_size / (stop - start))).backward()  # see the module docstring
        self.optimizer.step()
        self._sums[i] = loss_sum.detach().double()
        self._sizes[i] = stop - start
        self._correct[i] = (logits.detach().argmax(dim=1) == y).sum()
        self._step_index = i + 1
        wall = time.perf_counter() - t0
        comm = min(self.comm.take(), wall)
        self.step_comm_s.append(comm)
        self.step_compute_s.append(wall - comm)

    def agree(self, stop: bool) -> bool:
        """Whether any rank wants to stop (its time budget spent): every rank must run the same
        steps, or the next all-reduce would wait forever. One all-reduce of one number."""
        t0 = time.perf_counter()
        flag = torch.tensor([int(stop)], dtype=torch.int32)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if self.step_comm_s:
            self.step_comm_s[-1] += time.perf_counter() - t0
        return bool(flag.item())

    def epoch_stats(self) -> tuple[np.ndarray, np.ndarray]:
        """The whole batches' mean losses and hit counts (summed over ranks: one all-reduce)."""
        n = self._step_index
        sizes = self._sizes[:n]
        both = torch.stack([self._sums[:n], self._correct[:n].double()])
        dist.all_reduce(both)
        return (both[0] / sizes).numpy(), both[1].numpy().astype(np.int64)

    def model_state(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()  # the wrapped module's, without DDP's "module." prefix

    def timings(self) -> dict[str, Any]:
        """Per step: compute and communication seconds (this rank), and their totals."""
        compute, comm = sum(self.step_compute_s), sum(self.step_comm_s)
        return {
            "step_compute_s": list(self.step_compute_s),
            "step_comm_s": list(self.step_comm_s),
            "compute_s": compute,
            "comm_s": comm,
            "comm_share": comm / (compute + comm) if compute + comm > 0 else None,
        }


class DdpEngine(DdpTrainer):
    """TinyCNN with plain SGD, data-parallel (the `torch-ddp` engine)."""

    def __init__(self, params: Params, lr: float, threads: int) -> None:
        # TorchEngine loads the weights into a TinyCNN; its module becomes ours.
        single = TorchEngine(params, lr, threads)
        self.lr = float(lr)
        super().__init__(
            single.model, lambda parameters: torch.optim.SGD(parameters, lr=self.lr), threads
        )

    @classmethod
    def from_params(cls, params: Params, *, lr: float, threads: int = 1) -> DdpEngine:
        return cls(params, lr, threads)

    @classmethod
    def from_module(
        cls, model: nn.Module, make_optimizer: OptimizerFactory, *, threads: int = 1
    ) -> DdpTrainer:
        return DdpTrainer(model, make_optimizer, threads)

    def params(self) -> Params:
        m = self.model
        assert isinstance(m, TinyCNN)
        return {
            "conv_w": m.conv.weight.detach().numpy().copy(),
            "conv_b": m.conv.bias.detach().numpy().copy(),
            "fc_w": m.fc.weight.detach().numpy().copy(),
            "fc_b": m.fc.bias.detach().numpy().copy(),
        }
