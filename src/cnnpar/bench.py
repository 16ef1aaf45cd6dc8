"""`cnnpar bench train`: TinyCNN training throughput of every engine, side by side, in one run.

Each engine trains from the same initial weights on the same first 8,192 training digits
(batches cycled), in one process, with the thread pools pinned by `timing.set_threads`. One timed
repeat is a fixed number of SGD steps (calibrated to about `seconds`), followed by reading the
step statistics back, which waits for a GPU. `timing.measure` runs the warm-up outside the clock
and keeps every repeat; we report the median and the interquartile range as images/s.

The roofline is the float32 GEMM rate `timing.sgemm_peak` measures at the same thread count:
fraction = (training FLOPs per image, spec.flops_per_image) × images/s ÷ sgemm FLOP/s.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass

import numpy as np

from cnnpar import io, timing
from cnnpar.data import load_mnist
from cnnpar.nets import tinycnn
from cnnpar.nets.tinycnn import spec

CPU_CONFIGS = ((8, 32), (32, 128))  # (filters F, batch size B)
GPU_CONFIGS = ((32, 1000), (256, 1000))
CPU_ENGINES = ("numpy", "numba", "torch")
GPU_ENGINES = ("cuda", "torch-cuda")
THREADS = (1, 2)
BENCH_IMAGES = 8192
BENCH_LR = 0.01
# Targets of issue 3 on the 2-core reference machine.
TARGET_NUMBA_VS_TORCH = 3.0  # at F=8, B=32, 2 threads
TARGET_NUMBA_SCALING = 1.8  # numba 2 threads / 1 thread
TARGET_ROOFLINE = 0.20


@dataclass
class TrainBenchRow:
    engine: str
    filters: int
    batch_size: int
    threads: int  # host threads the engine ran with
    steps: int  # SGD steps per timed repeat
    images_per_s: float  # median over repeats
    images_per_s_q1: float  # from the slower quartile of times
    images_per_s_q3: float
    gflops: float  # achieved, counting spec.flops_per_image(F) per image
    roofline_gflops: float | None  # sgemm peak at `threads` (None on a GPU)
    roofline_fraction: float | None
    repeats: int
    median_s: float
    iqr_s: float


def allocator() -> str:
    preload = os.environ.get("LD_PRELOAD", "")
    return f"LD_PRELOAD={preload}" if preload else "glibc malloc (no LD_PRELOAD)"


def measure_engine(
    name: str,
    filters: int,
    batch_size: int,
    threads: int,
    images: np.ndarray,
    labels: np.ndarray,
    repeats: int,
    seconds: float,
    peak_gflops: float | None,
) -> TrainBenchRow:
    """Images/s of `name` training TinyCNN(filters) at batch_size, as a TrainBenchRow."""
    engine = tinycnn.get_engine(name).from_params(
        spec.init_params(filters, seed=0), lr=BENCH_LR, threads=threads
    )
    engine.warm_up()
    bounds = list(spec.batch_bounds(len(labels) - len(labels) % batch_size, batch_size))

    def load() -> None:  # untimed: hands the data over and resets the step statistics
        engine.load_epoch(images, labels)

    def steps_fn(n_steps: int):
        def run() -> None:
            for i in range(n_steps):
                engine.train_step(*bounds[i % len(bounds)])
            engine.epoch_stats()  # waits for a GPU; cheap on the CPU

        return run

    # Calibrate the repeat length on a few steps (this also warms caches and allocators).
    load()
    probe = min(4, len(bounds))
    start = time.perf_counter()
    steps_fn(probe)()
    per_step = (time.perf_counter() - start) / probe
    n_steps = max(probe, math.ceil(seconds / max(per_step, 1e-7)))

    m = timing.measure(steps_fn(n_steps), repeats=repeats, warmup=1, setup=load)
    images_per_repeat = n_steps * batch_size
    ips = images_per_repeat / m.median
    gflops = ips * spec.flops_per_image(filters) / 1e9
    return TrainBenchRow(
        engine=name,
        filters=filters,
        batch_size=batch_size,
        threads=threads,
        steps=n_steps,
        images_per_s=ips,
        images_per_s_q1=images_per_repeat / m.q3,
        images_per_s_q3=images_per_repeat / m.q1,
        gflops=gflops,
        roofline_gflops=peak_gflops,
        roofline_fraction=gflops / peak_gflops if peak_gflops else None,
        repeats=repeats,
        median_s=m.median,
        iqr_s=m.iqr,
    )


def _print_row(row: TrainBenchRow) -> None:
    roof = f"{100 * row.roofline_fraction:5.1f}%" if row.roofline_fraction is not None else "    -"
    print(
        f"F={row.filters:<3d} B={row.batch_size:<4d} threads={row.threads}  "
        f"{row.engine:<10s} {row.images_per_s:>11,.0f} images/s  "
        f"IQR [{row.images_per_s_q1:,.0f}, {row.images_per_s_q3:,.0f}]  "
        f"{row.gflops:6.2f} GFLOP/s  roofline {roof}",
        flush=True,
    )


def train_bench(
    quick: bool = False,
    cuda: bool = False,
    repeats: int = 5,
    seconds: float = 0.5,
    csv_path: str | None = None,
) -> list[TrainBenchRow]:
    """Measure, print the table, the ratios and the targets; return the rows."""
    if quick:
        repeats, seconds = min(repeats, 3), min(seconds, 0.1)
    if csv_path is not None:
        io.ensure_writable_dir(os.path.dirname(os.path.abspath(csv_path)))
    train = load_mnist("train")
    images = train.images[:BENCH_IMAGES]
    labels = train.labels[:BENCH_IMAGES].astype(np.int64)

    env = timing.environment()
    print(f"cnnpar bench train: {env.cpu_model}, {env.logical_cores} logical cores")
    print(f"allocator: {allocator()}")
    print(f"timing: {repeats} repeats of ~{seconds:g} s after 1 untimed warm-up; median, IQR")
    print("FLOPs/image (training, dense): " + ", ".join(
        f"F={f}: {spec.flops_per_image(f):,}" for f in sorted({f for f, _ in CPU_CONFIGS})
    ))  # fmt: skip

    rows: list[TrainBenchRow] = []
    peaks: dict[int, float] = {}
    for threads in THREADS:
        peaks[threads] = timing.sgemm_peak(threads)["sgemm_gflops"]
        print(f"sgemm roofline at {threads} thread(s): {peaks[threads]:.1f} GFLOP/s")
    for threads in THREADS:
        effective = timing.set_threads(threads)
        print(f"threads={threads}: effective {effective}")
        for filters, batch in CPU_CONFIGS:
            for name in CPU_ENGINES:
                if name == "numpy" and threads > 1:
                    continue  # the sequential reference: measured once, at 1 thread
                row = measure_engine(
                    name, filters, batch, threads, images, labels, repeats, seconds,
                    peaks[threads] if name != "numpy" else peaks[1],
                )  # fmt: skip
                rows.append(row)
                _print_row(row)
    if numba_layer := _numba_layer():
        print(f"numba threading layer: {numba_layer}")

    if cuda:
        rows += _gpu_bench(images, labels, repeats, seconds)

    _print_summary(rows)
    if csv_path is not None:
        io.write_csv(csv_path, [asdict(r) for r in rows])
        print(f"wrote {csv_path}")
    return rows


def _gpu_bench(images, labels, repeats: int, seconds: float) -> list[TrainBenchRow]:
    status = tinycnn.available_engines()
    missing = [name for name in GPU_ENGINES if status[name] is not None]
    if missing:
        for name in missing:
            print(f"skipping {name}: {status[name]}")
        return []
    timing.set_threads(1)
    rows = []
    for filters, batch in GPU_CONFIGS:
        for name in GPU_ENGINES:
            row = measure_engine(
                name, filters, batch, 1, images, labels, repeats, seconds, peak_gflops=None
            )
            rows.append(row)
            _print_row(row)
    return rows


def _numba_layer() -> str | None:
    import numba

    try:
        return str(numba.threading_layer())
    except ValueError:
        return None


def _lookup(rows, engine: str, filters: int, batch: int, threads: int) -> TrainBenchRow | None:
    for row in rows:
        if (row.engine, row.filters, row.batch_size, row.threads) == (
            engine,
            filters,
            batch,
            threads,
        ):
            return row
    return None


def _print_summary(rows: list[TrainBenchRow]) -> None:
    print("\nratios (medians)")
    for filters, batch in CPU_CONFIGS:
        numpy_row = _lookup(rows, "numpy", filters, batch, 1)
        for threads in THREADS:
            numba_row = _lookup(rows, "numba", filters, batch, threads)
            torch_row = _lookup(rows, "torch", filters, batch, threads)
            if numba_row is None or torch_row is None or numpy_row is None:
                continue
            print(
                f"F={filters:<3d} B={batch:<4d} threads={threads}  "
                f"numba/torch {numba_row.images_per_s / torch_row.images_per_s:6.2f}x  "
                f"numba/numpy {numba_row.images_per_s / numpy_row.images_per_s:7.1f}x  "
                f"numba roofline {100 * numba_row.roofline_fraction:5.1f}%"
            )
        scaled = [_lookup(rows, e, filters, batch, t) for e in ("numba", "torch") for t in THREADS]
        if all(scaled):
            nb1, nb2, t1, t2 = scaled
            print(
                f"F={filters:<3d} B={batch:<4d} 2 threads / 1 thread: "
                f"numba {nb2.images_per_s / nb1.images_per_s:.2f}x  "
                f"torch {t2.images_per_s / t1.images_per_s:.2f}x"
            )
    for filters, batch in GPU_CONFIGS:
        gpu, ref = (_lookup(rows, e, filters, batch, 1) for e in GPU_ENGINES)
        if gpu and ref:
            print(
                f"F={filters:<3d} B={batch:<4d} GPU  cuda/torch-cuda "
                f"{gpu.images_per_s / ref.images_per_s:.2f}x"
            )

    nb2 = _lookup(rows, "numba", 8, 32, 2)
    nb1 = _lookup(rows, "numba", 8, 32, 1)
    t2 = _lookup(rows, "torch", 8, 32, 2)
    if nb1 and nb2 and t2:
        best_roof = max(r.roofline_fraction or 0.0 for r in rows if r.engine == "numba")
        checks = [
            (
                f"numba >= {TARGET_NUMBA_VS_TORCH:g}x torch at F=8 B=32 2 threads",
                nb2.images_per_s / t2.images_per_s,
                TARGET_NUMBA_VS_TORCH,
                "x",
            ),
            (
                f"numba 2 threads >= {TARGET_NUMBA_SCALING:g}x 1 thread at F=8 B=32",
                nb2.images_per_s / nb1.images_per_s,
                TARGET_NUMBA_SCALING,
                "x",
            ),
            (
                f"numba >= {100 * TARGET_ROOFLINE:g}% of the sgemm roofline (best config)",
                100 * best_roof,
                100 * TARGET_ROOFLINE,
                "%",
            ),
        ]
        print("\ntargets")
        for text, value, target, unit in checks:
            verdict = "met" if value >= target else "NOT met"
            print(f"  {text}: {value:.2f}{unit} -> {verdict}")
