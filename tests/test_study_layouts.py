"""Ranked layouts in the study's tables and the `layouts` figure, on hand-made jobs: torch-ddp
2 ranks x 1 thread beside torch and numba at 2 threads, mode ranks beside processes."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
import pytest

from cnnpar import registry
from cnnpar.study import figures, tables

# (engine or mode, cores, ranks): rate per block (blocks 1, 2), communication share
TRAIN = {("numba", 1, 1): 4000.0, ("numba", 2, 1): 7600.0, ("torch", 1, 1): 2000.0,
         ("torch", 2, 1): 3000.0, ("torch-ddp", 2, 2): 3400.0}  # fmt: skip
CLASSIFY = {("sequential", 1, 1): 5000.0, ("processes", 2, 1): 9000.0, ("ranks", 2, 2): 9500.0}
COMM = {"torch-ddp": 0.25, "ranks": 0.05}


def _job(study: str, who: str, cores: int, ranks: int, rate: float, block: int) -> dict:
    job = {
        "study": study, "model": "tinycnn" if study == "train" else "mosaicnet",
        "engine": who if study == "train" else None, "mode": who if study == "classify" else None,
        "filters": 8 if study == "train" else None,
        "grid": "20x30" if study == "classify" else None,
        "cells": 600 if study == "classify" else None, "batch_size": 32, "seed": 0,
        "block": block, "parallelism_requested": cores, "parallelism": cores, "ranks": ranks,
        "comm_share": COMM.get(who), "cpus_available": 2,
        "rate_unit": "images/s" if study == "train" else "cells/s",
        "rate": rate * (1.0 if block == 1 else 0.8), "flops_per_item": 1e6,
        "roofline_gflops": 100.0, "roofline_device": "cpu", "accuracy": 0.9, "warmup_s": 0.1,
        "startup_s": 1.0, "flagged": False, "flag_reasons": "",
        "machine": "AMD EPYC|2|24|", "machine_name": "AMD EPYC, 2 CPUs, 24 GiB",
    }  # fmt: skip
    job["end_to_end_rate"] = job["rate"] / 2
    job["gflops"] = job["rate"] * job["flops_per_item"] / 1e9
    job["roofline_fraction"] = job["gflops"] / job["roofline_gflops"]
    return job


@pytest.fixture
def jobs() -> pd.DataFrame:
    rows = [
        _job(study, who, cores, ranks, rate, block)
        for study, rates in (("train", TRAIN), ("classify", CLASSIFY))
        for (who, cores, ranks), rate in rates.items()
        for block in (1, 2)
    ]
    frame = pd.DataFrame(rows)
    frame["label"] = [tables._label(row) for row in frame.to_dict("records")]
    return frame


def test_ranked_layouts_are_their_own_rows_with_their_communication(jobs):
    summary = tables.summarize(jobs, pd.DataFrame())
    ddp = summary[summary["engine"] == "torch-ddp"].iloc[0]
    assert (ddp["parallelism_requested"], ddp["ranks"], ddp["comm_share"]) == (2, 2, 0.25)
    assert ddp["rate"] == pytest.approx((3400.0 * 3400.0 * 0.8) ** 0.5)
    ranks = summary[summary["mode"] == "ranks"].iloc[0]
    assert ranks["speedup"] == pytest.approx(9500.0 / 5000.0)  # over sequential, per block
    assert pd.isna(summary[summary["engine"] == "torch"]["comm_share"]).all()
    assert "train torch-ddp 2 ranks x 1 thread F=8 B=32 seed 0 block 1" in set(jobs["label"])

    compared = tables.compare(jobs)
    pair = compared[compared["subject"].str.startswith("ranks")].iloc[0]
    assert (pair["subject"], pair["reference"]) == (
        "ranks 2 ranks x 1 thread",
        "processes 2 workers",
    )
    assert pair["ratio"] == pytest.approx(9500.0 / 9000.0)
    subjects = set(compared[compared["study"] == "train"]["subject"])
    assert "torch-ddp 2 ranks x 1 thread" in subjects | set(compared["reference"])


def test_layouts_figure_compares_layouts_at_equal_cores(jobs):
    assert registry.FIGURES["layouts"].tables == ("summary",)
    summary = tables.summarize(jobs, pd.DataFrame())
    fig = figures.layouts(summary)
    train_ax, classify_ax = fig.axes[:2]
    train_labels = [t.get_text().replace("\n", " ") for t in train_ax.get_xticklabels()]
    # at 2 cores, slowest first: torch 1 process of 2 threads, torch-ddp 2 ranks, numba
    assert train_labels == ["torch 2 threads", "torch-ddp 2 ranks × 1 thread", "numba 2 threads"]
    classify_labels = [t.get_text().replace("\n", " ") for t in classify_ax.get_xticklabels()]
    assert classify_labels == ["processes 2 workers", "ranks 2 ranks × 1 thread"]
    notes = [t.get_text() for t in train_ax.texts]
    assert any("comm 25%" in n for n in notes) and "2 cores" in train_ax.get_title()
    plt.close(fig)


def test_layouts_figure_without_ranked_jobs_says_so():
    fig = figures.layouts(pd.DataFrame(columns=tables.SUMMARY_COLUMNS))
    assert all("no " in " ".join(t.get_text() for t in ax.texts) for ax in fig.axes[:2])
    plt.close(fig)
