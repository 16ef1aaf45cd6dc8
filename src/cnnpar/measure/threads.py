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


def set_threads(threads: int, *, numba: bool = False) -> dict[str, int | None]:
    """Pin torch and BLAS pools to `threads`, and numba's too when `numba` (a command that runs
    numba code); return the effective counts.

    Only with `numba` is numba's thread pool started: a torch-only command never depends on
    numba's threading layer (a NUMBA_THREADING_LAYER that cannot load is then not its problem).
    Raises NumbaSettingError (one line) when `numba` and numba's settings cannot work.
    """
    if threads < 1:
        raise ValueError(f"threads must be >= 1 (got {threads})")
    for var in BLAS_ENV_VARS:
        os.environ[var] = str(threads)
    from cnnpar.measure import numba_settings

    if numba:
        # NUMBA_NUM_THREADS caps the pool size when numba starts; size it for the largest
        # count we may ask for later in this process, then lower the active count.
        if "numba" not in sys.modules:
            numba_settings.check_num_threads()
            given = int(os.environ.get("NUMBA_NUM_THREADS") or 0)
            os.environ["NUMBA_NUM_THREADS"] = str(max(threads, os.cpu_count() or 1, given))
        numba_settings.start_threads()
        import numba as numba_module

        numba_module.set_num_threads(min(threads, numba_module.config.NUMBA_NUM_THREADS))
    import torch

    torch.set_num_threads(threads)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(threads)
    except ImportError:  # pragma: no cover - threadpoolctl ships with our deps
        pass
    return effective_threads()


def switch_threads(threads: int, *, numba: bool = False) -> None:
    """Change the width of torch's (and numba's, when `numba`) already started pools to
    `threads`, cheaply enough to run between two timed windows; `set_threads` must have sized
    them first (numba's pool never grows past the count it started with)."""
    import torch

    if numba:
        import numba as numba_module

        numba_module.set_num_threads(min(threads, numba_module.config.NUMBA_NUM_THREADS))
    torch.set_num_threads(threads)


def effective_threads() -> dict[str, int | None]:
    """Thread counts as the libraries report them now; numba's is None unless its pool was
    started in this process (reading it must not start it)."""
    counts: dict[str, int | None] = {"numba_threads": None}
    import torch

    if "numba" in sys.modules:
        from cnnpar.measure.numba_settings import started_layer

        if started_layer() is not None:
            import numba

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
    from cnnpar.measure.numba_settings import started_layer

    return started_layer()
