"""Thread control: pin every pool we know of (numba, torch, BLAS) and read back the counts the
libraries actually use, which is what every record stores (not the requested count)."""

from __future__ import annotations

import os
import sys

BLAS_ENV_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)


def set_threads(threads: int) -> dict[str, int | None]:
    """Pin numba, torch and BLAS pools to `threads`; return the effective counts."""
    if threads < 1:
        raise ValueError(f"threads must be >= 1 (got {threads})")
    for var in BLAS_ENV_VARS:
        os.environ[var] = str(threads)
    # NUMBA_NUM_THREADS caps the pool size when numba starts; size it for the largest count we
    # may ask for later in this process, then lower the active count with set_num_threads.
    if "numba" not in sys.modules:
        ceiling = max(threads, os.cpu_count() or 1, int(os.environ.get("NUMBA_NUM_THREADS") or 0))
        os.environ["NUMBA_NUM_THREADS"] = str(ceiling)
    import numba
    import torch

    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    torch.set_num_threads(threads)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(threads)
    except ImportError:  # pragma: no cover - threadpoolctl ships with our deps
        pass
    return effective_threads()


def effective_threads() -> dict[str, int | None]:
    """Thread counts as the libraries report them now."""
    counts: dict[str, int | None] = {}
    import numba
    import torch

    counts["numba_threads"] = int(numba.get_num_threads())
    counts["torch_threads"] = int(torch.get_num_threads())
    counts["torch_interop_threads"] = int(torch.get_num_interop_threads())
    try:
        from threadpoolctl import threadpool_info

        blas = [p["num_threads"] for p in threadpool_info() if p.get("user_api") == "blas"]
        counts["blas_threads"] = int(max(blas)) if blas else None
    except ImportError:  # pragma: no cover
        counts["blas_threads"] = None
    return counts


def numba_threading_layer() -> str | None:
    """numba's threading layer (tbb, omp, workqueue), or None before any parallel region ran."""
    import numba

    try:
        return str(numba.threading_layer())
    except ValueError:
        return None
