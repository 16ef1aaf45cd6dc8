"""`cnnpar bench classify`: every classification mode on one mosaic, side by side, in one run.

Each variant is a fresh `cnnpar classify --repeats 1` process (the command a user or the
workflow runs), so process-wide state (torch thread pools, malloc settings, oneDNN caches)
never leaks from one variant into the next. The first four variants compare the modes as
originally run (plain eager backend, default malloc); the rest add one speed change at a time,
so each change's effect is the ratio to the variant it changes (`Variant.base`).

The variants are timed in interleaved rounds, after `warmup` untimed ones: round r runs every
variant once, in an order reversed every other round (ABBA, as `measure_interleaved` does), so
a shared host's drift in speed falls on every variant alike. Every ratio (the speed-up over the
first variant, each parallel mode over its sequential twin, each change over its base) is
formed round by round from that round's two samples and summarised by
`paired_ratio_interval`: the geometric mean over rounds with a Student-t 95% interval. A ratio
whose interval contains 1 is reported as not resolved, and a target is met only when the
interval's low end reaches it.

The roofline is probed inside every round too (`roofline`: sgemm at each effective core
count), between variants and outside their clocks, and each variant's roofline fraction is
formed per round against that round's probe and summarised by `log_interval`.
"""

from __future__ import annotations

import csv
import itertools
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np

from cnnpar import io
from cnnpar.bench.common import (
    BenchError,
    BenchRow,
    check_csv_path,
    direction,
    interval_dict,
    interval_text,
    paired_rate_ratio,
    rate_fields,
    rounds_csv_path,
    speedup_fields,
    target_check,
    target_verdict,
    write_results,
)
from cnnpar.limits import check_parallelism
from cnnpar.measure.intervals import METHOD, Interval, log_interval
from cnnpar.measure.roofline import roofline
from cnnpar.measure.timing import quartiles
from cnnpar.nets.mosaicnet import FLOPS_PER_IMAGE

TARGET_BEST_VS_B1 = 4.0
TARGET_PROCESSES_VS_SEQUENTIAL = 1.6
B1_LABEL = "sequential B=1 (original loop)"


@dataclass(frozen=True)
class Variant:
    label: str
    mode: str
    workers: int
    batch_size: int
    backend: str
    tune_malloc: bool
    base: str | None = None  # the same-mode variant this one changes one thing of


def variants(workers: int) -> list[Variant]:
    n = workers
    b256 = "sequential B=256"
    malloc = "sequential B=256 +malloc"
    threads, processes = f"threads N={n} B=256", f"processes N={n} B=256"
    p_mkldnn = f"processes N={n} B=256 +malloc +mkldnn"
    p_jit = f"processes N={n} B=256 +malloc +jit"
    return [
        # The modes as originally run: eager torch, default glibc malloc.
        Variant(B1_LABEL, "sequential", 1, 1, "eager", False),
        Variant(b256, "sequential", 1, 256, "eager", False, base=B1_LABEL),
        Variant(threads, "threads", n, 256, "eager", False),
        Variant(processes, "processes", n, 256, "eager", False),
        # One change at a time on top of sequential B=256.
        Variant(malloc, "sequential", 1, 256, "eager", True, base=b256),
        Variant(f"{malloc} +channels-last", "sequential", 1, 256, "channels-last", True, malloc),
        Variant(f"{malloc} +mkldnn", "sequential", 1, 256, "mkldnn", True, base=malloc),
        Variant(f"{malloc} +jit", "sequential", 1, 256, "jit", True, base=malloc),
        # The tuned engine in each parallel mode (mkldnn + malloc is the classify default).
        Variant(f"{threads} +malloc +mkldnn", "threads", n, 256, "mkldnn", True, base=threads),
        Variant(p_mkldnn, "processes", n, 256, "mkldnn", True, base=processes),
        Variant(p_jit, "processes", n, 256, "jit", True, base=p_mkldnn),
        Variant(f"processes N={n} B=64 +malloc +jit", "processes", n, 64, "jit", True, p_jit),
    ]


def random_weights(path: Path, seed: int = 0) -> Path:
    """A seeded random-init MosaicNet state_dict: throughput does not depend on weight values."""
    import torch

    from cnnpar.nets.mosaicnet import MosaicNet

    torch.manual_seed(seed)
    buffer = BytesIO()  # see nets.training.torch_bytes: a full disk then fails with ENOSPC
    torch.save(MosaicNet().state_dict(), buffer)
    io.write_bytes(path, buffer.getvalue())
    return path


@dataclass(frozen=True)
class Run:
    """One variant's `cnnpar classify` process in one round."""

    seconds: float  # classify_s of its one timed repeat
    startup_s: float
    cells: int
    processes: int
    cores: int  # processes x torch threads per process
    malloc: str
    accuracy: float
    pred: np.ndarray


def _run_variant(
    v: Variant,
    weights: Path,
    rows: int,
    cols: int,
    seed: int,
    out: Path,
    env: Mapping[str, str],
) -> Run:
    cmd = [
        sys.executable,
        "-m",
        "cnnpar.cli",
        "classify",
        f"--weights={weights}",
        f"--rows={rows}",
        f"--cols={cols}",
        f"--mode={v.mode}",
        f"--workers={v.workers}",
        f"--batch-size={v.batch_size}",
        f"--seed={seed}",
        "--repeats=1",
        f"--backend={v.backend}",
        f"--tune-malloc={str(v.tune_malloc).lower()}",
        f"--out={out}",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, env=dict(env))
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:]
        raise BenchError(f"variant {v.label!r} failed (exit {done.returncode}): {' '.join(tail)}")
    try:
        with (out / "result.csv").open() as fh:
            first = next(csv.DictReader(fh))
        pred = np.load(out / "predictions.npz")["pred"]
    finally:
        shutil.rmtree(out, ignore_errors=True)  # rounds x variants directories add up
    return Run(
        seconds=float(first["classify_s"]),
        startup_s=float(first["startup_s"]),
        cells=int(first["cells"]),
        processes=int(first["processes"]),
        cores=int(first["processes"]) * int(first["torch_threads"]),
        malloc=first["malloc"],
        accuracy=float(first["accuracy"]),
        pred=pred,
    )


@dataclass(frozen=True)
class Rounds:
    """What the interleaved rounds measured; index [round][variant], timed rounds only."""

    runs: list[list[Run]]
    order: list[list[int]]  # 1-based position of each variant in its round's run order
    peaks: list[dict[int, float]]  # that round's roofline GFLOP/s per core count


def interleaved_rounds(
    n_variants: int,
    run_one: Callable[[int], Run],
    probe: Callable[[set[int]], dict[int, float]],
    repeats: int,
    warmup: int,
    progress: Callable[[str], None] = print,
) -> Rounds:
    """Run `run_one(i)` for every variant once per round and `probe(core counts)` once per
    round, the order reversed every other round (ABBA); the first `warmup` rounds are untimed.

    The probe is one more step of the round, last in even rounds and first in odd ones, so it
    drifts with the round like the variants do. It needs the core counts, which a variant's
    process reports: in odd rounds it uses those seen in earlier rounds, and any count new in
    a round is probed at its end.
    """
    probe_step = n_variants  # the step after the last variant
    runs: list[list[Run]] = []
    order: list[list[int]] = []
    peaks: list[dict[int, float]] = []
    known: set[int] = set()
    total = warmup + repeats
    for round_index in range(total):
        start = time.perf_counter()
        steps = list(range(n_variants + 1))
        if round_index % 2:
            steps.reverse()
        done: dict[int, Run] = {}
        position: dict[int, int] = {}
        round_peaks: dict[int, float] = {}
        for step in steps:
            if step == probe_step:
                known |= {run.cores for run in done.values()}
                round_peaks = probe(known) if known else {}
            else:
                position[step] = len(position) + 1
                done[step] = run_one(step)
        if missing := {run.cores for run in done.values()} - round_peaks.keys():
            round_peaks |= probe(missing)
            known |= missing
        if round_index < warmup:
            progress(f"  warm-up round {round_index + 1}/{warmup}: {_elapsed(start)}")
            continue
        runs.append([done[i] for i in range(n_variants)])
        order.append([position[i] for i in range(n_variants)])
        peaks.append(round_peaks)
        progress(
            f"  round {round_index - warmup + 1}/{repeats}: {_elapsed(start)}; sgemm "
            + ", ".join(f"{g:.1f} GFLOP/s on {n}" for n, g in sorted(round_peaks.items()))
        )
    return Rounds(runs=runs, order=order, peaks=peaks)


def _elapsed(start: float) -> str:
    return f"{time.perf_counter() - start:.1f} s"


def _row(v: Variant, index: int, rounds: Rounds, grid: str) -> tuple[BenchRow, Interval]:
    """The variant's row from its timed rounds, and its roofline fraction's interval."""
    runs = [r[index] for r in rounds.runs]
    seconds = [run.seconds for run in runs]
    median, q1, q3 = quartiles(seconds)
    cells = runs[0].cells
    rates = rate_fields(cells, median, q1, q3)
    gflops = FLOPS_PER_IMAGE * rates["rate"] / 1e9
    roofs = [peaks[run.cores] for run, peaks in zip(runs, rounds.peaks, strict=True)]
    fraction = log_interval(
        FLOPS_PER_IMAGE * cells / run.seconds / 1e9 / roof
        for run, roof in zip(runs, roofs, strict=True)
    )
    fraction_bounds = interval_dict(fraction)
    row = BenchRow(
        bench="classify",
        variant=v.label,
        engine=v.mode,
        model="mosaicnet",
        filters=None,
        grid=grid,
        batch_size=v.batch_size,
        parallelism_requested=v.workers,
        parallelism_effective=runs[0].cores,
        processes=runs[0].processes,
        repeats=len(seconds),
        median_s=median,
        q1_s=q1,
        q3_s=q3,
        items=cells,
        **rates,
        rate_unit="cells/s",
        gflops=gflops,
        roofline_gflops=log_interval(roofs).estimate,
        roofline_fraction=fraction.estimate,
        **speedup_fields(None, None),
        extra={
            "backend": v.backend,
            "malloc": runs[0].malloc,
            "startup_s": quartiles(run.startup_s for run in runs)[0],
            "accuracy": runs[0].accuracy,
            "pred_mismatches": 0,
            "roofline_fraction_low": fraction_bounds["low"],
            "roofline_fraction_high": fraction_bounds["high"],
        },
        rounds=[
            {
                "seconds": run.seconds,
                "order": order[index],
                "startup_s": run.startup_s,
                "roofline_gflops": roof,
            }
            for run, order, roof in zip(runs, rounds.order, roofs, strict=True)
        ],
    )
    return row, fraction


def classify_bench(
    weights: str | None,
    rows: int = 100,
    cols: int = 100,
    workers: int = 2,
    repeats: int = 5,
    seed: int = 0,
    csv_path: str | None = None,
    only: Sequence[int] | None = None,
    warmup: int = 1,
) -> list[BenchRow]:
    """Run the variants (or the `only` 1-based subset) in `repeats` interleaved rounds after
    `warmup` untimed ones, print the table and paired ratios, write the CSVs and run record
    when `csv_path` is given; return the rows."""
    params = {
        "weights": weights,
        "rows": rows,
        "cols": cols,
        "workers": workers,
        "repeats": repeats,
        "warmup": warmup,
        "seed": seed,
        "only": list(only) if only else None,
    }
    if repeats < 1 or warmup < 0:
        raise BenchError(f"need --repeats >= 1 and --warmup >= 0 (got {repeats}, {warmup})")
    chosen = variants(workers)
    if only:
        bad = sorted({i for i in only if not 1 <= i <= len(chosen)})
        if bad:
            raise BenchError(
                f"--only {' '.join(map(str, bad))}: no such variant; "
                f"choose numbers from 1 to {len(chosen)}"
            )
        chosen = [chosen[i - 1] for i in dict.fromkeys(only)]
    check_csv_path(csv_path)
    check_parallelism(workers, "--workers")
    if weights is not None and not Path(weights).is_file():
        raise BenchError(f"--weights {weights} is not a file")
    # The roofline probes pin thread counts through environment variables (OMP_NUM_THREADS,
    # ...); every variant gets the environment from before the first probe instead.
    env = dict(os.environ)
    grid = f"{rows}x{cols}"
    with tempfile.TemporaryDirectory(prefix="cnnpar-bench-classify-") as tmp_name:
        tmp = Path(tmp_name)
        if weights is None:
            weights_path = random_weights(tmp / "random_init.pt", seed)
            weights_note = "random-init weights (timing does not depend on weight values)"
        else:
            weights_path = Path(weights)
            weights_note = f"weights {weights_path}"
        grid_note = f"{rows}x{cols} mosaic ({rows * cols:,} cells), seed {seed}"
        print(f"bench classify: {grid_note}, {weights_note}")
        print(
            f"  {repeats} timed rounds after {warmup} untimed; a round runs every variant once, "
            "each as a fresh\n  `cnnpar classify --repeats 1` process, in an order reversed every "
            "other round,\n  and probes the sgemm roofline; ratios: per-round ratios, geometric "
            "mean [95% t interval]",
            flush=True,
        )
        run_numbers = itertools.count()

        def run_one(i: int) -> Run:
            out = tmp / f"run{next(run_numbers)}"
            return _run_variant(chosen[i], weights_path, rows, cols, seed, out, env)

        rounds = interleaved_rounds(
            len(chosen),
            run_one,
            roofline,
            repeats,
            warmup,
            progress=lambda line: print(line, flush=True),
        )

    made = [_row(v, i, rounds, grid) for i, v in enumerate(chosen)]
    results = [row for row, _ in made]
    fractions = {row.variant: fraction for row, fraction in made}
    reference = rounds.runs[0][0].pred
    for i, row in enumerate(results):
        row.extra["pred_mismatches"] = max(
            int(np.count_nonzero(r[i].pred != reference)) for r in rounds.runs
        )
    speedups: dict[str, Interval] = {}
    for row in results[1:]:
        speedups[row.variant] = paired_rate_ratio(row, results[0])
        for key, value in speedup_fields(speedups[row.variant], results[0].variant).items():
            setattr(row, key, value)
    _print_table(results, speedups, fractions, rounds)
    summary = _print_ratios(results, chosen, workers)
    summary["roofline_gflops"] = {
        str(n): interval_dict(log_interval(p[n] for p in rounds.peaks if n in p))
        for n in sorted({n for p in rounds.peaks for n in p})
    }
    if csv_path is not None:
        summary["rounds_csv"] = rounds_csv_path(csv_path).name
        write_results(results, csv_path, params=params, results=summary)
        print(f"wrote {csv_path}, {rounds_csv_path(csv_path)} (one row per round) and run.json")
    return results


def _print_table(
    results: list[BenchRow],
    speedups: dict[str, Interval],
    fractions: dict[str, Interval],
    rounds: Rounds,
) -> None:
    width = max(len(r.variant) for r in results)
    base = results[0]
    # Speed-ups are over the first variant run: "× B=1" in the full run.
    over = "× B=1" if base.variant == B1_LABEL else "× 1st"
    speedup_texts = {k: interval_text(v) for k, v in speedups.items()}
    roof_texts = {k: interval_text(v.scaled(100), unit="%", digits=1) for k, v in fractions.items()}
    sw = max(len(over), *(len(t) for t in speedup_texts.values()))
    rw = max(len("roofline"), *(len(t) for t in roof_texts.values()))
    print()
    print(
        f"{'variant':<{width}}  {'start-up s':>10}  {'classify s':>10}  {'IQR s':>7}  "
        f"{'cells/s':>8}  {over:>{sw}}  {'GFLOP/s':>7}  {'roofline':>{rw}}  {'pred diff':>9}"
    )
    for r in results:
        print(
            f"{r.variant:<{width}}  {r.extra['startup_s']:>10.2f}  {r.median_s:>10.3f}  "
            f"{r.iqr_s:>7.3f}  {r.rate:>8,.0f}  {speedup_texts.get(r.variant, 'ref'):>{sw}}  "
            f"{r.gflops:>7.1f}  {roof_texts[r.variant]:>{rw}}  {r.extra['pred_mismatches']:>9}"
        )
    print(
        f"classify s: median of {len(rounds.runs)} rounds; {over}: cells/s over {base.variant}, "
        "per round, geometric mean [95% interval]; roofline likewise, against each round's probe"
    )
    print(
        "roofline: sgemm "
        + ", ".join(
            f"{interval_text(log_interval(p[n] for p in rounds.peaks if n in p), '', 1)} "
            f"GFLOP/s on {n} core{'s' * (n > 1)}"
            for n in sorted({n for p in rounds.peaks for n in p})
        )
        + f"; MosaicNet {FLOPS_PER_IMAGE / 1e6:.2f} MFLOP per cell"
    )


def _find(results: list[BenchRow], label: str | None) -> BenchRow | None:
    return next((r for r in results if r.variant == label), None)


def _ratio_record(num: BenchRow, den: BenchRow, ratio: Interval) -> dict[str, Any]:
    return {
        "ratio": f"{num.variant} / {den.variant}",
        "numerator": num.variant,
        "denominator": den.variant,
        **interval_dict(ratio),
        "verdict": direction(ratio),
    }


def _print_ratios(results: list[BenchRow], chosen: list[Variant], workers: int) -> dict[str, Any]:
    """Print the best variant against B=1, each parallel mode against its sequential twin and
    each change against its base, all from paired rounds, and whether the predictions agree;
    return the same as a summary for the run record."""
    summary: dict[str, Any] = {"interval": METHOD, "targets": [], "ratios": []}
    print()
    b1 = _find(results, B1_LABEL)
    others = [r for r in results if r is not b1]
    if b1 is not None and others:
        over_b1 = {r.variant: paired_rate_ratio(r, b1) for r in others}
        best = max(others, key=lambda r: over_b1[r.variant].estimate)
        ratio = over_b1[best.variant]
        verdict = target_verdict(ratio, TARGET_BEST_VS_B1)
        print(
            f"best mode: {best.variant} / {b1.variant}: {interval_text(ratio)}, "
            f"{direction(ratio)}; target >= {TARGET_BEST_VS_B1:g}×: {verdict}"
        )
        summary["targets"].append(
            target_check(
                f"best >= {TARGET_BEST_VS_B1:g}x {B1_LABEL}", ratio, TARGET_BEST_VS_B1, "x"
            )
        )
        summary["ratios"].append(_ratio_record(best, b1, ratio))
    pairs = [
        ("sequential B=256", f"processes N={workers} B=256"),
        ("sequential B=256 +malloc +mkldnn", f"processes N={workers} B=256 +malloc +mkldnn"),
        ("sequential B=256 +malloc +jit", f"processes N={workers} B=256 +malloc +jit"),
        ("sequential B=256", f"threads N={workers} B=256"),
        ("sequential B=256 +malloc +mkldnn", f"threads N={workers} B=256 +malloc +mkldnn"),
    ]
    for seq_label, par_label in pairs:
        seq, par = _find(results, seq_label), _find(results, par_label)
        if seq is None or par is None:
            continue
        ratio = paired_rate_ratio(par, seq)
        efficiency = interval_text(ratio.scaled(100 / workers), unit="%", digits=0)
        line = (
            f"{par_label} / {seq_label}: {interval_text(ratio)}, {direction(ratio)} "
            f"(parallel efficiency {efficiency})"
        )
        if par.engine == "processes":
            verdict = target_verdict(ratio, TARGET_PROCESSES_VS_SEQUENTIAL)
            line += f"; target >= {TARGET_PROCESSES_VS_SEQUENTIAL:g}×: {verdict}"
            summary["targets"].append(
                target_check(
                    f"{par_label} >= {TARGET_PROCESSES_VS_SEQUENTIAL:g}x {seq_label}",
                    ratio,
                    TARGET_PROCESSES_VS_SEQUENTIAL,
                    "x",
                )
            )
        summary["ratios"].append(_ratio_record(par, seq, ratio))
        print(line)
    for v in chosen:
        row, base = _find(results, v.label), _find(results, v.base)
        if row is None or base is None:
            continue
        ratio = paired_rate_ratio(row, base)
        print(f"change: {v.label} / {base.variant}: {interval_text(ratio)}, {direction(ratio)}")
        summary["ratios"].append(_ratio_record(row, base, ratio))
    # The best variant's ratio to B=1 may also be a change's ratio: list each pair once.
    summary["ratios"] = list({r["ratio"]: r for r in summary["ratios"]}.values())
    mismatched = [r.variant for r in results if r.extra["pred_mismatches"]]
    print(
        "predictions: identical in every variant and round"
        if not mismatched
        else f"predictions: differ from the first variant in {', '.join(mismatched)}"
    )
    summary["pred_mismatched_variants"] = mismatched
    summary["speedup_over"] = results[0].variant
    return summary
