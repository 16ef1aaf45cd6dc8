"""MosaicNet prepared for inference on one backend (see `registry.BACKENDS`)."""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import statistics
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import nn

from cnnpar.classify.config import ClassifyError
from cnnpar.nets.mosaicnet import MosaicNet

Net = Callable[[torch.Tensor], torch.Tensor]  # x (B, 1, 28, 28) float32 → logits (B, 10)


def _pool_first(model: MosaicNet) -> MosaicNet:
    """A copy with each ReLU moved after its max-pool: max and ReLU commute exactly, and the
    ReLU then passes over a quarter of the values (about 5% of a 1-thread forward)."""
    model = copy.deepcopy(model)
    f = model.features
    model.features = nn.Sequential(f[0], f[2], f[1], f[3], f[5], f[4])
    return model


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

            self.features = torch_mkldnn.to_mkldnn(_pool_first(model).features)
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
            return torch.jit.optimize_for_inference(torch.jit.script(_pool_first(model)))
    raise ClassifyError(f"unknown backend {backend!r}")


def warm_up(net: Net, batch_sizes: int | tuple[int, ...], device: str) -> None:
    """Run a few batches of each size a run will see, so oneDNN primitives, TorchScript
    profiling and the allocator are settled before the clock starts (TorchScript specialises on
    the second or third call with a new shape)."""
    sizes = (batch_sizes,) if isinstance(batch_sizes, int) else batch_sizes
    with torch.inference_mode():
        for size in sizes:
            x = torch.zeros(size, 1, 28, 28, device=device)
            for _ in range(3):
                net(x)


# --- what "auto" stands for on the CPU -------------------------------------------------------
# Which backend is fastest depends on the CPU and the torch build (oneDNN's blocked layout saves
# reorders; TorchScript's frozen graph fuses conv + ReLU; either can win), so "auto" measures
# them once per machine, torch version and batch size, at one thread, and keeps the result.
CPU_CANDIDATES = ("eager", "channels-last", "mkldnn", "jit")
ROUNDS, BATCHES = 3, 3  # alternating rounds of BATCHES timed batches per candidate


def cache_file() -> Path:
    from cnnpar.data import cache_root

    return cache_root() / "backends.json"


def measure_cpu_backends(batch_size: int) -> dict[str, float]:
    """Images/s of each CPU candidate classifying (batch_size, 1, 28, 28) float32 batches with
    a seeded random-init MosaicNet at one torch thread: the median of ROUNDS alternating rounds
    (ABBA order), after each candidate's `warm_up`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = MosaicNet().eval()
        x = torch.rand(batch_size, 1, 28, 28, generator=torch.Generator().manual_seed(0))
        nets = {name: prepare(model, name) for name in CPU_CANDIDATES}
        for net in nets.values():
            warm_up(net, batch_size, "cpu")
        rates: dict[str, list[float]] = {name: [] for name in nets}
        with torch.inference_mode():
            for r in range(ROUNDS):
                for name in CPU_CANDIDATES if r % 2 == 0 else CPU_CANDIDATES[::-1]:
                    start = time.perf_counter()
                    for _ in range(BATCHES):
                        nets[name](x)
                    rates[name].append(BATCHES * batch_size / (time.perf_counter() - start))
        return {name: statistics.median(v) for name, v in rates.items()}
    finally:
        torch.set_num_threads(threads)


def fastest(rates: Mapping[str, float]) -> tuple[str, str]:
    """(the fastest backend, the evidence as one line) from measured images/s."""
    best = max(rates, key=lambda name: rates[name])
    order = [n for n in CPU_CANDIDATES if n in rates] + [
        n for n in rates if n not in CPU_CANDIDATES
    ]
    shown = ", ".join(f"{name} {rates[name]:,.0f}" for name in order)
    return best, f"fastest of {shown} images/s"


def choose_cpu_backend(
    batch_size: int,
    machine: str,
    lock: str | os.PathLike[str] | None = None,
    measure: Callable[[int], dict[str, float]] | None = None,
    cache: Path | None = None,
) -> tuple[str, str]:
    """The backend "auto" runs on this CPU at `batch_size` and why: measured once per `machine`
    (its identity), torch version, version of this module and batch size, under the timing
    `lock` (so it neither disturbs nor is disturbed by a timed run) by `measure` (default
    `measure_cpu_backends`), then read from `cache` (JSON; default `cache_file()`; not kept
    where it is not writable)."""
    from cnnpar.measure.interference import timing_lock

    cache = cache_file() if cache is None else cache
    # This file's hash: a changed backend is measured anew.
    code = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:12]
    key = f"{machine} | torch {torch.__version__} | backends {code} | batch {batch_size}"

    def known_rates() -> tuple[dict, dict | None]:
        try:
            known = json.loads(cache.read_text())
        except (OSError, ValueError):
            return {}, None
        if not isinstance(known, dict):
            return {}, None
        rates = known.get(key)
        complete = isinstance(rates, dict) and set(rates) == set(CPU_CANDIDATES)
        return known, rates if complete else None

    known, rates = known_rates()
    if rates is None:
        held = contextlib.nullcontext() if lock is None else timing_lock(lock)
        with held:
            known, rates = known_rates()  # another process may have measured meanwhile
            if rates is None:
                rates = (measure or measure_cpu_backends)(batch_size)
                with contextlib.suppress(OSError):
                    cache.parent.mkdir(parents=True, exist_ok=True)
                    temp = cache.with_suffix(f".{os.getpid()}.tmp")
                    temp.write_text(json.dumps({**known, key: rates}, indent=1, sort_keys=True))
                    temp.replace(cache)
    best, evidence = fastest(rates)
    return best, f"{evidence} at batch {batch_size}, 1 thread (measured once on this machine)"
