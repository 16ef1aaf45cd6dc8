"""`torch-compile`: the torch engine's SGD step compiled whole by torch.compile, on the CPU.

What a PyTorch user tries first against per-operation overhead. The whole step (uint8 to float,
forward, softmax cross-entropy, the gradients and the in-place SGD update) is one compiled
graph, `fullgraph=True`, so a graph break fails instead of quietly running pieces eagerly. The
gradients come from `torch.func.grad_and_value`, which dynamo traces: `loss.backward()` and
`Optimizer.zero_grad` break the graph, which would leave the backward pass and the update to
eager autograd. Inductor turns the elementwise work, pooling, loss and update into generated
C++ (OpenMP over torch's threads) and calls oneDNN for the convolution and BLAS for the
matmuls.

Mode: the default. "reduce-overhead" adds CUDA graphs, which do nothing on the CPU;
"max-autotune" benchmarks alternative GEMM kernels while compiling (a far longer compile), for
matmuls, which are not where this step spends its time.

Shapes are static (`dynamic=False`): one graph per batch size. A dynamic batch dimension would
still be specialised to a range of sizes (inductor guards on reduction lengths), so the warm-up
compiles exactly the batch sizes the run announced (`expect_batch_sizes`: the full batch and
the epoch's last, smaller one), and no compile lands inside the clock. A size not announced
compiles at its first step.

Threads: inductor writes `torch.get_num_threads()` at compile time into its kernels, and
dynamo does not guard on it, so a graph compiled at 2 threads keeps running its kernels at 2
after `set_threads(1)`. When the count differs from the one this process last compiled at,
every compiled graph is dropped and the step compiles again; that is why the registry never
lets this engine switch thread counts between timed windows.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch.func import grad_and_value

from cnnpar.nets.tinycnn import EngineUnavailable
from cnnpar.nets.tinycnn.spec import IMAGE, Params
from cnnpar.nets.tinycnn.torch_engine import TorchEngine
from cnnpar.nets.torch_step import OptimizerFactory, to_input

# Past dynamo's recompile limit a function runs eagerly with only a warning: it would then be
# timed as compiled. Fail instead.
torch._dynamo.config.fail_on_recompile_limit_hit = True

Weights = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def loss_and_logits(
    weights: Weights, x: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """TinyCNN.forward's ops on explicit weights (conv_w (F, 1, 3, 3), conv_b (F,),
    fc_w (10, 169·F), fc_b (10,)): x (B, 1, 28, 28) float32, labels (B,) int64 →
    (batch-mean cross-entropy, 0-d; logits (B, 10))."""
    conv_w, conv_b, fc_w, fc_b = weights
    pooled = F.max_pool2d(torch.relu(F.conv2d(x, conv_w, conv_b)), 2)
    logits = F.linear(pooled.flatten(1), fc_w, fc_b)
    return F.cross_entropy(logits, labels), logits


def sgd_step(
    conv_w: torch.Tensor,
    conv_b: torch.Tensor,
    fc_w: torch.Tensor,
    fc_b: torch.Tensor,
    pixels: torch.Tensor,
    labels: torch.Tensor,
    lr: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One plain SGD step (w -= lr · ∂loss/∂w, as torch.optim.SGD) on the float32 weights, in
    place, from pixels (B, 28, 28) uint8 and labels (B,) int64. Returns the batch-mean loss
    (0-d float32) and the number of correct predictions (0-d int64), both before the step."""
    weights = (conv_w, conv_b, fc_w, fc_b)
    grads, (loss, logits) = grad_and_value(loss_and_logits, has_aux=True)(
        weights, to_input(pixels), labels
    )
    for w, g in zip(weights, grads, strict=True):
        w.add_(g, alpha=-lr)
    return loss, (logits.argmax(dim=1) == labels).sum()


# One compiled function for every engine of the process: engines of the same shapes share its
# graphs (dynamo caches them on the function's code).
compiled_step = torch.compile(sgd_step, fullgraph=True, dynamic=False)

_compiled_at_threads: int | None = None  # torch's thread count the cached graphs were built at


def match_threads() -> None:
    """Drop every compiled graph if torch's thread count changed since the last compile (the
    next call compiles at the new count)."""
    global _compiled_at_threads
    threads = torch.get_num_threads()
    if _compiled_at_threads not in (None, threads):
        torch.compiler.reset()
    _compiled_at_threads = threads


class TorchCompileEngine(TorchEngine):
    """TinyCNN with plain SGD, each step one call of `compiled_step`."""

    def __init__(self, params: Params, lr: float, threads: int) -> None:
        super().__init__(params, lr, threads)
        m = self.model
        # Views of the module's parameters: the compiled step updates them in place, so
        # predict() (eager, off the clock) and params() read the trained weights.
        self._weights: Weights = tuple(
            p.detach() for p in (m.conv.weight, m.conv.bias, m.fc.weight, m.fc.bias)
        )  # type: ignore[assignment]
        self._batch_sizes: tuple[int, ...] = ()

    @classmethod
    def from_module(
        cls, model: torch.nn.Module, make_optimizer: OptimizerFactory, *, threads: int = 1
    ) -> TorchEngine:
        raise TypeError("torch-compile trains TinyCNN only (registry: models)")

    def expect_batch_sizes(self, sizes: Iterable[int]) -> None:
        """The batch sizes (rows per step) the coming epochs use, for warm_up to compile."""
        self._batch_sizes = tuple(sorted({int(s) for s in sizes}))

    def warm_up(self) -> None:
        """Compile the step at every announced batch size, at torch's current thread count, on
        copies of the weights and zero pixels: the weights stay put. Raises EngineUnavailable
        (one line) when torch.compile fails here (a missing or broken C++ toolchain)."""
        match_threads()
        for size in self._batch_sizes:
            spare = tuple(w.clone() for w in self._weights)
            pixels = torch.zeros((size, IMAGE, IMAGE), dtype=torch.uint8)
            labels = torch.zeros(size, dtype=torch.int64)
            try:
                compiled_step(*spare, pixels, labels, self.lr)
            except Exception as err:  # inductor's errors are many and many lines long
                first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
                raise EngineUnavailable(
                    f"engine 'torch-compile' cannot run: torch.compile failed here ({first})"
                ) from err

    def train_step(self, start: int, stop: int) -> None:
        i = self._claim_step(start, stop)
        match_threads()
        loss, correct = compiled_step(
            *self._weights, self._images[start:stop], self._labels[start:stop], self.lr
        )
        self._losses[i] = loss
        self._correct[i] = correct
        self._step_index = i + 1
