"""`cnnpar bench classify`: every classification mode on one mosaic, side by side, in one run.

Each variant is a fresh `cnnpar classify` process (the command a user or the workflow runs),
so process-wide state (torch thread pools, malloc settings, oneDNN caches) never leaks from one
variant into the next. The first four rows compare the modes as originally run (plain eager
backend, default malloc); the rest add one speed change at a time, so each change's effect is a
row-to-row ratio. Speed-ups are over the first variant run; they are ratios of medians from
separate processes, so they carry no paired quartiles.
"""

from __future__ import annotations

import csv
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np

from cnnpar import io
from cnnpar.bench.common import BenchError, BenchRow, check_csv_path, rate_fields, write_results
from cnnpar.limits import check_parallelism
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
    once: bool = False  # time one repeat only (B=1 over 60,000 cells takes ~30 s)


def variants(workers: int) -> list[Variant]:
    n = workers
    return [
        # The modes as originally run: eager torch, default glibc malloc.
        Variant(B1_LABEL, "sequential", 1, 1, "eager", False, once=True),
        Variant("sequential B=256", "sequential", 1, 256, "eager", False),
        Variant(f"threads N={n} B=256", "threads", n, 256, "eager", False),
        Variant(f"processes N={n} B=256", "processes", n, 256, "eager", False),
        # One change at a time on top of sequential B=256.
        Variant("sequential B=256 +malloc", "sequential", 1, 256, "eager", True),
        Variant(
            "sequential B=256 +malloc +channels-last", "sequential", 1, 256, "channels-last", True
        ),
        Variant("sequential B=256 +malloc +mkldnn", "sequential", 1, 256, "mkldnn", True),
        Variant("sequential B=256 +malloc +jit", "sequential", 1, 256, "jit", True),
        # The tuned engine in each parallel mode (mkldnn + malloc is the classify default).
        Variant(f"threads N={n} B=256 +malloc +mkldnn", "threads", n, 256, "mkldnn", True),
        Variant(f"processes N={n} B=256 +malloc +mkldnn", "processes", n, 256, "mkldnn", True),
        Variant(f"processes N={n} B=256 +malloc +jit", "processes", n, 256, "jit", True),
        Variant(f"processes N={n} B=64 +malloc +jit", "processes", n, 64, "jit", True),
    ]


def random_weights(path: Path, seed: int = 0) -> Path:
    """A seeded random-init MosaicNet state_dict: throughput does not depend on weight values."""
    import torch

    from cnnpar.nets.mosaicnet import MosaicNet

    torch.manual_seed(seed)
    buffer = BytesIO()  # see train._torch_bytes: a full disk then fails with ENOSPC
    torch.save(MosaicNet().state_dict(), buffer)
    io.write_bytes(path, buffer.getvalue())
    return path


def _run_variant(
    v: Variant, weights: Path, rows: int, cols: int, repeats: int, seed: int, out: Path
) -> dict[str, Any]:
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
        f"--repeats={1 if v.once else repeats}",
        f"--backend={v.backend}",
        f"--tune-malloc={str(v.tune_malloc).lower()}",
        f"--out={out}",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:]
        raise BenchError(f"variant {v.label!r} failed (exit {done.returncode}): {' '.join(tail)}")
    with (out / "result.csv").open() as fh:
        rows_csv = list(csv.DictReader(fh))
    first = rows_csv[0]
    return {
        "classify_s": [float(r["classify_s"]) for r in rows_csv],
        "cells": int(first["cells"]),
        "processes": int(first["processes"]),
        "cores": int(first["processes"]) * int(first["torch_threads"]),
        "malloc": first["malloc"],
        "startup_s": float(first["startup_s"]),
        "accuracy": float(first["accuracy"]),
        "pred": np.load(out / "predictions.npz")["pred"],
    }


def _row(v: Variant, raw: dict[str, Any], grid: str, peak: float) -> BenchRow:
    median, q1, q3 = quartiles(raw["classify_s"])
    rates = rate_fields(raw["cells"], median, q1, q3)
    gflops = FLOPS_PER_IMAGE * rates["rate"] / 1e9
    return BenchRow(
        bench="classify",
        variant=v.label,
        engine=v.mode,
        model="mosaicnet",
        filters=None,
        grid=grid,
        batch_size=v.batch_size,
        parallelism_requested=v.workers,
        parallelism_effective=raw["cores"],
        processes=raw["processes"],
        repeats=len(raw["classify_s"]),
        median_s=median,
        q1_s=q1,
        q3_s=q3,
        items=raw["cells"],
        **rates,
        rate_unit="cells/s",
        gflops=gflops,
        roofline_gflops=peak,
        roofline_fraction=gflops / peak,
        speedup=None,
        speedup_q1=None,
        speedup_q3=None,
        speedup_over=None,
        extra={
            "backend": v.backend,
            "malloc": raw["malloc"],
            "startup_s": raw["startup_s"],
            "accuracy": raw["accuracy"],
            "pred_mismatches": 0,
        },
    )


def classify_bench(
    weights: str | None,
    rows: int = 200,
    cols: int = 300,
    workers: int = 2,
    repeats: int = 5,
    seed: int = 0,
    csv_path: str | None = None,
    only: Sequence[int] | None = None,
) -> list[BenchRow]:
    """Run the variants (or the `only` 1-based subset), print the table and ratios, write the
    CSV and its run record when `csv_path` is given; return the rows."""
    params = {
        "weights": weights,
        "rows": rows,
        "cols": cols,
        "workers": workers,
        "repeats": repeats,
        "seed": seed,
        "only": list(only) if only else None,
    }
    chosen = variants(workers)
    if only:
        bad = sorted({i for i in only if not 1 <= i <= len(chosen)})
        if bad:
            raise BenchError(
                f"--only {' '.join(map(str, bad))}: no such variant; "
                f"choose numbers from 1 to {len(chosen)}"
            )
        chosen = [chosen[i - 1] for i in only]
    check_csv_path(csv_path)
    check_parallelism(workers, "--workers")
    if weights is not None and not Path(weights).is_file():
        raise BenchError(f"--weights {weights} is not a file")
    grid = f"{rows}x{cols}"
    with tempfile.TemporaryDirectory(prefix="cnnpar-bench-classify-") as tmp_name:
        tmp = Path(tmp_name)
        if weights is None:
            weights_path = random_weights(tmp / "random_init.pt", seed)
            weights_note = "random-init weights (seeded; timing does not depend on weight values)"
        else:
            weights_path = Path(weights)
            weights_note = f"weights {weights_path}"
        print(f"bench classify: {rows}x{cols} mosaic ({rows * cols:,} cells), seed {seed};")
        print(f"  {weights_note}; each variant is a fresh `cnnpar classify` process;")
        print(f"  median of {repeats} timed repeats (B=1: one), pool start-up timed apart")
        raws = []
        for i, v in enumerate(chosen, start=1):
            raws.append(_run_variant(v, weights_path, rows, cols, repeats, seed, tmp / f"v{i}"))
            rate = raws[-1]["cells"] / quartiles(raws[-1]["classify_s"])[0]
            print(f"  [{i}/{len(chosen)}] {v.label}: {rate:,.0f} cells/s", flush=True)

    peaks = roofline({raw["cores"] for raw in raws})
    reference = raws[0]["pred"]
    results = [_row(v, raw, grid, peaks[raw["cores"]]) for v, raw in zip(chosen, raws, strict=True)]
    for row, raw in zip(results, raws, strict=True):
        row.extra["pred_mismatches"] = int(np.count_nonzero(raw["pred"] != reference))
        if row is not results[0]:
            row.speedup = row.rate / results[0].rate
            row.speedup_over = results[0].variant
    _print_table(results, peaks)
    summary = _print_ratios(results, workers)
    if csv_path is not None:
        write_results(results, csv_path, params=params, results=summary)
        print(f"wrote {csv_path} and run.json beside it")
    return results


def _print_table(results: list[BenchRow], peaks: dict[int, float]) -> None:
    width = max(len(r.variant) for r in results)
    base = results[0]
    # Speed-ups are over the first variant run: "x B=1" in the full run.
    over = "x B=1" if base.variant == B1_LABEL else "x 1st"
    print()
    print(
        f"{'variant':<{width}}  {'start-up s':>10}  {'classify s':>10}  {'IQR s':>7}  "
        f"{'cells/s':>8}  {over:>6}  {'GFLOP/s':>7}  {'roofline':>8}  {'pred diff':>9}"
    )
    for r in results:
        print(
            f"{r.variant:<{width}}  {r.extra['startup_s']:>10.2f}  {r.median_s:>10.3f}  "
            f"{r.iqr_s:>7.3f}  {r.rate:>8,.0f}  "
            f"{1.0 if r.speedup is None else r.speedup:>6.2f}  {r.gflops:>7.1f}  "
            f"{100 * r.roofline_fraction:>7.1f}%  {r.extra['pred_mismatches']:>9}"
        )
    if over != "x B=1":
        print(f"x 1st: cells/s over {base.variant}")
    print(
        "roofline: sgemm "
        + ", ".join(f"{g:.1f} GFLOP/s on {n} core{'s' * (n > 1)}" for n, g in peaks.items())
        + f"; MosaicNet {FLOPS_PER_IMAGE / 1e6:.2f} MFLOP per cell"
    )


def _find(results: list[BenchRow], label: str) -> BenchRow | None:
    return next((r for r in results if r.variant == label), None)


def _print_ratios(results: list[BenchRow], workers: int) -> dict[str, Any]:
    """Print the best mode against B=1, each parallel mode against its sequential twin, and
    whether the predictions agree; return the same as a summary for the run record."""
    summary: dict[str, Any] = {"targets": []}
    print()
    b1 = _find(results, B1_LABEL)
    best = max(results, key=lambda r: r.rate)
    if b1 is not None:
        ratio = best.rate / b1.rate
        met = ratio >= TARGET_BEST_VS_B1
        print(
            f"best mode: {best.variant}, {best.rate:,.0f} cells/s = {ratio:.2f}x "
            f"sequential B=1 ({'meets' if met else 'MISSES'} the >= {TARGET_BEST_VS_B1:g}x target)"
        )
        summary["targets"].append(
            {
                "target": f"best >= {TARGET_BEST_VS_B1:g}x {B1_LABEL}",
                "value": ratio,
                "goal": TARGET_BEST_VS_B1,
                "unit": "x",
                "met": met,
            }
        )
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
        ratio = par.rate / seq.rate
        line = (
            f"{par_label} / {seq_label}: {ratio:.2f}x (parallel efficiency {ratio / workers:.0%})"
        )
        if par.engine == "processes":
            met = ratio >= TARGET_PROCESSES_VS_SEQUENTIAL
            line += f", {'meets' if met else 'MISSES'} the >= "
            line += f"{TARGET_PROCESSES_VS_SEQUENTIAL:g}x target"
            summary["targets"].append(
                {
                    "target": f"{par_label} >= {TARGET_PROCESSES_VS_SEQUENTIAL:g}x {seq_label}",
                    "value": ratio,
                    "goal": TARGET_PROCESSES_VS_SEQUENTIAL,
                    "unit": "x",
                    "met": met,
                }
            )
        print(line)
    mismatched = [r.variant for r in results if r.extra["pred_mismatches"]]
    print(
        "predictions: identical in every variant"
        if not mismatched
        else f"predictions: differ from the first variant in {', '.join(mismatched)}"
    )
    summary["pred_mismatched_variants"] = mismatched
    summary["speedup_over"] = results[0].variant
    return summary
