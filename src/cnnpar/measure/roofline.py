"""The roofline: the float32 matrix-multiply rate this machine reaches at a thread count."""

from __future__ import annotations

import numpy as np

from cnnpar.measure.threads import set_threads
from cnnpar.measure.timing import measure


def sgemm_peak(threads: int, n: int = 1024, repeats: int = 5) -> dict[str, float]:
    """Best float32 GEMM rate (GFLOP/s) of numpy's BLAS and torch at `threads` threads."""
    import torch

    set_threads(threads)
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    flops = 2.0 * n**3
    numpy_s = measure(lambda: a @ b, repeats=repeats, warmup=1).min
    torch_s = measure(lambda: torch.mm(ta, tb), repeats=repeats, warmup=1).min
    rates = {"numpy": flops / numpy_s / 1e9, "torch": flops / torch_s / 1e9}
    return {
        "sgemm_threads": threads,
        "sgemm_n": n,
        "sgemm_gflops_numpy": rates["numpy"],
        "sgemm_gflops_torch": rates["torch"],
        "sgemm_gflops": max(rates.values()),
    }


def roofline(cores: set[int]) -> dict[int, float]:
    """sgemm GFLOP/s per core count: the higher of sgemm_peak(n) and n × the one-thread peak,
    since a roofline is an upper bound and a busy machine can make the n-thread GEMM measure
    below n single-thread ones."""
    one = sgemm_peak(1)["sgemm_gflops"]
    return {
        n: one if n == 1 else max(sgemm_peak(n)["sgemm_gflops"], n * one) for n in sorted(cores)
    }
