"""`cnnpar bench classify`: every classification mode on one mosaic, side by side, in one run.

Each variant is a fresh `cnnpar classify` process (the command a user or the workflow runs),
so process-wide state (torch thread pools, malloc settings, oneDNN caches) never leaks from one
variant into the next. The first four rows are the issue's comparison at the plain eager
backend; the rest add one speed change at a time, so each change's effect is a row-to-row ratio.
"""

from __future__ import annotations

import csv
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cnnpar import io
from cnnpar.errors import CnnparError
from cnnpar.measure.roofline import roofline
from cnnpar.measure.timing import quartiles
from cnnpar.nets.mosaicnet import FLOPS_PER_IMAGE

TARGET_BEST_VS_B1 = 4.0
TARGET_PROCESSES_VS_SEQUENTIAL = 1.6


class BenchError(CnnparError):
    """A benchmark variant failed."""


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
        # The four, as the original ran them: eager torch, default glibc malloc.
        Variant("sequential B=1 (original loop)", "sequential", 1, 1, "eager", False, once=True),
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
    with io.atomic_path(path) as tmp:
        torch.save(MosaicNet().state_dict(), tmp)
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
    classify_s = [float(r["classify_s"]) for r in rows_csv]
    first = rows_csv[0]
    cells = int(first["cells"])
    median, q1, q3 = quartiles(classify_s)
    return {
        "label": v.label,
        "mode": v.mode,
        "workers": v.workers,
        "batch_size": v.batch_size,
        "backend": v.backend,
        "malloc": first["malloc"],
        "cores": int(first["processes"]) * int(first["torch_threads"]),
        "cells": cells,
        "repeats": len(classify_s),
        "startup_s": float(first["startup_s"]),
        "classify_median_s": median,
        "classify_iqr_s": q3 - q1,
        "cells_per_s": cells / median,
        "accuracy": float(first["accuracy"]),
        "pred": np.load(out / "predictions.npz")["pred"],
    }


def classify_bench(
    weights: str | None,
    rows: int = 200,
    cols: int = 300,
    workers: int = 2,
    repeats: int = 3,
    seed: int = 0,
    csv_path: str | None = None,
    only: Sequence[int] | None = None,
) -> list[dict[str, Any]]:
    """Run the variants (or the `only` 1-based subset), print the table and ratios, return rows."""
    chosen = variants(workers)
    if only:
        chosen = [chosen[i - 1] for i in only]
    with tempfile.TemporaryDirectory(prefix="cnnpar-bench-classify-") as tmp_name:
        tmp = Path(tmp_name)
        if weights is None:
            weights_path = random_weights(tmp / "random_init.pt", seed)
            weights_note = "random-init weights (seeded; timing does not depend on weight values)"
        else:
            weights_path = Path(weights)
            weights_note = f"weights {weights_path}"
        print(f"bench classify: {rows}x{cols} mosaic ({rows * cols:,} cells), seed {seed}, ")
        print(f"  {weights_note}; each variant is a fresh `cnnpar classify` process;")
        print(f"  median of {repeats} timed repeats (B=1: one), pool start-up timed apart")
        results = []
        for i, v in enumerate(chosen, start=1):
            out = tmp / f"v{i}"
            results.append(_run_variant(v, weights_path, rows, cols, repeats, seed, out))
            r = results[-1]
            print(f"  [{i}/{len(chosen)}] {v.label}: {r['cells_per_s']:,.0f} cells/s", flush=True)

    peaks = roofline({r["cores"] for r in results})
    reference = results[0]["pred"]
    for r in results:
        r["roofline_gflops"] = peaks[r["cores"]]
        r["achieved_gflops"] = FLOPS_PER_IMAGE * r["cells_per_s"] / 1e9
        r["roofline_fraction"] = r["achieved_gflops"] / r["roofline_gflops"]
        r["pred_mismatches"] = int(np.count_nonzero(r.pop("pred") != reference))
    _print_table(results, peaks)
    _print_ratios(results, workers)
    if csv_path is not None:
        io.write_csv(csv_path, results)
        print(f"wrote {csv_path}")
    return results


def _print_table(results: list[dict[str, Any]], peaks: dict[int, float]) -> None:
    width = max(len(r["label"]) for r in results)
    print()
    print(
        f"{'variant':<{width}}  {'start-up s':>10}  {'classify s':>10}  {'IQR s':>7}  "
        f"{'cells/s':>8}  {'x B=1':>6}  {'GFLOP/s':>7}  {'roofline':>8}  {'pred diff':>9}"
    )
    base = results[0]["cells_per_s"]
    for r in results:
        print(
            f"{r['label']:<{width}}  {r['startup_s']:>10.2f}  {r['classify_median_s']:>10.3f}  "
            f"{r['classify_iqr_s']:>7.3f}  {r['cells_per_s']:>8,.0f}  "
            f"{r['cells_per_s'] / base:>6.2f}  {r['achieved_gflops']:>7.1f}  "
            f"{100 * r['roofline_fraction']:>7.1f}%  {r['pred_mismatches']:>9}"
        )
    print(
        "roofline: sgemm "
        + ", ".join(f"{g:.1f} GFLOP/s on {n} core{'s' * (n > 1)}" for n, g in peaks.items())
        + f"; MosaicNet {FLOPS_PER_IMAGE / 1e6:.2f} MFLOP per cell"
    )


def _find(results: list[dict[str, Any]], label: str) -> dict[str, Any] | None:
    return next((r for r in results if r["label"] == label), None)


def _print_ratios(results: list[dict[str, Any]], workers: int) -> None:
    print()
    b1 = _find(results, "sequential B=1 (original loop)")
    best = max(results, key=lambda r: r["cells_per_s"])
    if b1 is not None:
        ratio = best["cells_per_s"] / b1["cells_per_s"]
        verdict = "meets" if ratio >= TARGET_BEST_VS_B1 else "MISSES"
        print(
            f"best mode: {best['label']}, {best['cells_per_s']:,.0f} cells/s = {ratio:.2f}x "
            f"sequential B=1 ({verdict} the >= {TARGET_BEST_VS_B1:g}x target)"
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
        ratio = par["cells_per_s"] / seq["cells_per_s"]
        line = (
            f"{par_label} / {seq_label}: {ratio:.2f}x (parallel efficiency {ratio / workers:.0%})"
        )
        if par["mode"] == "processes":
            verdict = "meets" if ratio >= TARGET_PROCESSES_VS_SEQUENTIAL else "MISSES"
            line += f", {verdict} the >= {TARGET_PROCESSES_VS_SEQUENTIAL:g}x target"
        print(line)
    mismatched = [r["label"] for r in results if r["pred_mismatches"]]
    print(
        "predictions: identical in every variant"
        if not mismatched
        else f"predictions: differ from the first variant in {', '.join(mismatched)}"
    )
