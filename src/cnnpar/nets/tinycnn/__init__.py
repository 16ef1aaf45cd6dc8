"""TinyCNN and its training engines, all behind one small protocol.

An engine owns a copy of the weights and trains it one SGD step at a time. The epoch's images
are handed over once (`load_epoch`), so a GPU engine copies them to the device once per epoch,
and every step names a row range of them rather than passing pixels. Per-step losses stay with
the engine until `epoch_stats`, so a GPU engine never waits for the host mid-epoch.

    engine = get_engine("numba").from_params(params, lr=0.05, threads=2)
    engine.warm_up()                      # compile; never changes the weights
    engine.load_epoch(images_u8, labels)  # (N, 28, 28) uint8, (N,) int
    for start, stop in spec.batch_bounds(N, B):
        engine.train_step(start, stop)
    losses, correct = engine.epoch_stats()  # per step: batch-mean loss, #correct
    logits = engine.predict(test_u8)        # (n, 10) float32
    weights = engine.params()               # float32 numpy, torch layout

An engine that compiles one graph per batch shape (torch-compile) also has
`expect_batch_sizes(sizes)`, called before `warm_up` so that it compiles them all there.

This module imports neither numba nor torch, so listing engines stays cheap.
"""

from __future__ import annotations

import functools
import importlib
import sys
from typing import Protocol

import numpy as np

from cnnpar.errors import CnnparError
from cnnpar.nets.tinycnn.spec import Params
from cnnpar.registry import ENGINES


class Engine(Protocol):
    threads: int  # the thread count it actually uses

    @classmethod
    def from_params(cls, params: Params, *, lr: float, threads: int = 1) -> Engine: ...

    def warm_up(self) -> None: ...

    def load_epoch(self, images: np.ndarray, labels: np.ndarray) -> None: ...

    def train_step(self, start: int, stop: int) -> None: ...

    def epoch_stats(self) -> tuple[np.ndarray, np.ndarray]: ...

    def predict(self, images: np.ndarray) -> np.ndarray: ...

    def params(self) -> Params: ...


class EngineUnavailable(CnnparError):
    """The engine exists but cannot run here (no GPU, say)."""


class UnknownEngine(CnnparError):
    """No engine by that name."""


def unavailable_reason(name: str) -> str | None:
    """None if engine `name` can run here, else a one-line reason naming the fix.

    A CPU engine always can, given numba's settings where numba compiles it: a numba setting it
    cannot read, or (numba's CPU threads) a threading layer that cannot load, makes it
    unavailable; an inductor engine needs torch.compile to support this Python and to find a
    C++ compiler. A GPU engine asks its own runtime (numba.cuda or torch.cuda).
    """
    if name not in ENGINES:
        raise UnknownEngine(f"unknown engine {name!r}; choose one of {', '.join(ENGINES)}")
    entry = ENGINES[name]
    target = entry.numba_target
    if target is not None:
        from cnnpar.measure import numba_settings

        try:
            numba_settings.load()
        except numba_settings.NumbaSettingError as err:
            return f"engine {name!r} cannot run: {err}"
        if target == "cpu" and (problem := numba_settings.threading_problem()) is not None:
            return f"engine {name!r} cannot run: {problem}"
    if entry.inductor and (problem := _inductor_problem()) is not None:
        return f"engine {name!r} cannot run: {problem}"
    if not entry.gpu:
        return None
    if entry.runtime == "numba":
        if not _numba_cuda_available():
            return (
                f"engine {name!r} needs a CUDA GPU; none found "
                "(set NUMBA_ENABLE_CUDASIM=1 to simulate)"
            )
        return None
    import torch

    if not torch.cuda.is_available():
        cpu = " or ".join(
            e.name
            for e in ENGINES.values()
            if not e.gpu and e.runtime == entry.runtime and e.layout == entry.layout
        )
        return f"engine {name!r} needs a CUDA GPU; none found (use --engine {cpu})"
    return None


@functools.cache
def _inductor_problem() -> str | None:
    """Why torch.compile cannot compile for the CPU here (one line), or None.

    Only the cheap checks, once per process: a real probe compile takes 5-30 s, too long for
    `cnnpar engines`. A compile that still fails says why at the engine's warm-up.
    """
    import torch

    if not torch._dynamo.is_inductor_supported():
        return (
            f"torch.compile does not support Python {sys.version_info.major}."
            f"{sys.version_info.minor} with torch {torch.__version__} (use --engine torch)"
        )
    from torch._inductor import cpp_builder

    try:
        cpp_builder.get_cpp_compiler()
    except Exception:  # InvalidCxxCompiler, or whatever a broken compiler raises
        return "torch.compile finds no working C++ compiler (install g++ or set CXX)"
    return None


def _numba_cuda_available() -> bool:
    # The simulator is chosen when numba.cuda is first imported, from numba's config (the
    # environment or a .numba_config.yaml).
    from cnnpar.measure import numba_settings

    if numba_settings.cuda_simulated():
        return True
    try:
        from numba import cuda

        return bool(cuda.is_available())
    except Exception:  # a broken driver or toolkit means "not available", not a crash
        return False


def get_engine(name: str) -> type[Engine]:
    """The engine class, or EngineUnavailable / UnknownEngine with a one-line message."""
    reason = unavailable_reason(name)
    if reason is not None:
        raise EngineUnavailable(reason)
    entry = ENGINES[name]
    return getattr(importlib.import_module(entry.module), entry.cls)


def available_engines() -> dict[str, str | None]:
    """Engine name → None if available here, else why not."""
    return {name: unavailable_reason(name) for name in ENGINES}


def not_as_named_here(name: str) -> str | None:
    """How engine `name` runs under numba's settings in this process when that is not as its
    name says ("in numba's CUDA simulator (...), not on a GPU"), naming the setting; None if it
    runs as named."""
    from cnnpar.measure import numba_settings

    target = ENGINES[name].numba_target
    if target is None:
        return None
    return numba_settings.not_as_named(target, numba_settings.settings().as_dict())
