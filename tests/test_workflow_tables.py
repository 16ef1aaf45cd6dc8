"""Tables, figures and report on synthetic job directories written in the CLI contract's format.

The numbers are chosen so that every derived value (speedup, efficiency, roofline fraction,
the findings' sentences) is known exactly.
"""

from __future__ import annotations

import dataclasses
import html
import json
import re
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cnnpar import registry, train
from cnnpar.classify import outputs as classify_outputs
from cnnpar.classify.config import ClassifyConfig
from cnnpar.measure.interference import Interference
from cnnpar.nets import mosaicnet
from cnnpar.nets.mosaicnet import FLOPS_PER_IMAGE
from cnnpar.nets.tinycnn import spec
from cnnpar.nets.tinycnn.spec import flops_per_image
from cnnpar.record import Parallelism, RecordError, RunRecord
from cnnpar.study import figures, report, tables
from cnnpar.study.kinds import KINDS
from cnnpar.train import TrainConfig

ENV = {"cpu_model": "Test CPU", "logical_cores": 2, "cpus_available": 2, "hostname": "testhost",
       "cnnpar": "0.1.0"}  # fmt: skip
# images/s per (engine, threads) on a machine at speed 1: numba scales 1.9× (95% efficiency).
TRAIN_RATES = {("numpy", 1): 1000.0, ("numba", 1): 4000.0, ("numba", 2): 7600.0,
               ("torch", 1): 2000.0, ("torch", 2): 3000.0}  # fmt: skip
# cells/s per (mode, workers) on every grid.
CLASSIFY_RATES = {("sequential", 1): 5000.0, ("threads", 2): 8000.0, ("processes", 2): 9000.0}
SGEMM = {1: 100.0, 2: 190.0}
# Triad GB/s per threads (cache, memory) and the L2 share per thread: memory is slow enough that
# the bandwidth roof binds the jobs whose working set leaves the L2 (classification, MosaicNet).
BANDWIDTH = {1: (80.0, 1.0), 2: (150.0, 1.5)}
L2_PER_THREAD = 2 << 20
# The machine's speed in each block: every job of a block sees it, so ratios inside a block are
# exact while rates spread over blocks.
DRIFT = {1: 1.0, 2: 0.7, 3: 1.2}
EPOCHS, REPEATS = 2, 2
GRIDS = ["10x10", "20x30"]
STARTUP = {"sequential": 0.5, "threads": 0.5, "processes": 3.0}


def guard(threads: int, flagged: bool = False) -> Interference:
    return Interference(
        seconds=2.0, cpus=2, others_cpu_share=0.5 if flagged else 0.01, steal_share=0.0,
        probe_before_gflops=SGEMM[threads], probe_after_gflops=SGEMM[threads], probe_change=0.0,
        roofline_gflops=SGEMM[threads], roofline_device=f"cpu ({threads} threads)",
        lock_wait_s=0.0, max_others_share=0.1, max_probe_change=0.15, flagged=flagged,
        reasons=["other processes took 50% of its 2 CPU(s) (limit 10%)"] if flagged else [],
        bandwidth_cache_gbs=BANDWIDTH[threads][0], bandwidth_memory_gbs=BANDWIDTH[threads][1],
        bandwidth_cache_bytes=L2_PER_THREAD * threads, bandwidth_memory_bytes=256 << 20,
    )  # fmt: skip


def findings_rows(page: str) -> list[dict[str, str]]:
    """The rows of a report's findings table, each by column header, plus its sentence
    (`title`); a cell's quieter second line is left out."""
    section = page[page.index('<section id="findings">') : page.index('<section id="figures">')]
    head, body = section[section.index("<table") : section.index("</table>")].split("</thead>")
    names = re.findall(r"<th>(.*?)</th>", head)
    rows = []
    for title, tr in re.findall(r'<tr[^>]*title="([^"]*)"[^>]*>(.*?)</tr>', body, re.S):
        cells = [re.sub(r'<div class="detail">.*?</div>', "", c)
                 for c in re.findall(r"<td[^>]*>(.*?)</td>", tr, re.S)]  # fmt: skip
        texts = [html.unescape(re.sub(r"<[^>]+>", "", c)).strip() for c in cells]
        rows.append({**dict(zip(names, texts, strict=True)), "title": html.unescape(title)})
    return rows


def _write_csv(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path, index=False)


def train_job(
    job: Path, cfg: TrainConfig, effective: int, metrics: list[dict], flagged: bool = False
) -> Path:
    """A training run directory written through the code `cnnpar train` writes with."""
    cfg = cfg.resolved()
    _write_csv(job / "metrics.csv", metrics)
    if cfg.model == "tinycnn":
        flops = flops_per_image(cfg.filters, training=True)
        traffic = (spec.bytes_per_image(cfg.filters, cfg.batch_size),
                   spec.working_set_bytes(cfg.filters, cfg.batch_size))  # fmt: skip
    else:
        flops = mosaicnet.flops_per_image(training=True)
        traffic = (mosaicnet.bytes_per_image(cfg.batch_size, training=True),
                   mosaicnet.working_set_bytes(cfg.batch_size, training=True))  # fmt: skip
    record = train.run_record(
        cfg,
        Parallelism(
            requested=cfg.threads,
            effective=effective,
            threads={"numba_threads": effective, "torch_threads": effective},
        ),
        results={
            "flops_per_image": flops,
            "bytes_per_image": traffic[0],
            "working_set_bytes": traffic[1],
            "final_test_acc": metrics[-1]["test_acc"],
            "warmup_s": 0.25,
        },
        outputs=["metrics.csv"],
        interference=guard(effective, flagged),
    )
    return _with_env(record).write(job)


def _with_env(record: RunRecord) -> RunRecord:
    return dataclasses.replace(record, environment={**record.environment, **ENV})


def _epochs(rate: float, images: int = 20000) -> list[dict]:
    return [
        {"epoch": e, "images": images, "seconds": images / rate, "images_per_s": rate,
         "train_loss": 1.0 / e, "train_acc": 0.9 + 0.02 * e, "test_loss": 1.1 / e,
         "test_acc": 0.9 + 0.02 * e}
        for e in range(1, EPOCHS + 1)
    ]  # fmt: skip


def fake_results(
    root: Path,
    seeds: tuple[int, ...] = (0,),
    flag: tuple[str, int] | None = None,
    cpus: int | None = None,
) -> list[Path]:
    """A results/ tree of run records as the train and classify commands write them: every
    configuration once per block, plus full-length runs and MosaicNet. `flag` = (job name,
    block) marks that job as disturbed; `cpus` caps what every job ran with (taskset)."""

    def ran(asked: int) -> int:
        return min(asked, cpus) if cpus else asked

    records = []
    for block, speed in DRIFT.items():
        for (engine, threads), rate in TRAIN_RATES.items():
            for seed in seeds:
                name = f"tinycnn-{engine}-{threads}-{seed}"
                cfg = TrainConfig(
                    out="", engine=engine, threads=threads, filters=8, batch_size=32,
                    seed=seed, block=block, time_budget=2.0,
                )  # fmt: skip
                records.append(train_job(root / f"{name}-b{block}", cfg, ran(threads),
                                         _epochs(rate * speed), flag == (name, block)))  # fmt: skip
        for grid in GRIDS:
            rows_, cols = (int(v) for v in grid.split("x"))
            cells = rows_ * cols
            for (mode, workers), rate in CLASSIFY_RATES.items():
                for seed in seeds:
                    name = f"classify-{mode}-{workers}-{grid}-{seed}"
                    job = root / f"{name}-b{block}"
                    seconds = cells / (rate * speed)
                    rows = [
                        {"mode": mode, "workers": workers, "batch_size": 64, "rows": rows_,
                         "cols": cols, "cells": cells, "distinct_digits": cells,
                         "startup_s": STARTUP[mode], "classify_s": seconds,
                         "total_s": STARTUP[mode] + seconds, "cells_per_s": cells / seconds,
                         "end_to_end_cells_per_s": cells / (STARTUP[mode] + seconds),
                         "accuracy": 0.99, "torch_threads": 1, "repeat": repeat}
                        for repeat in range(1, REPEATS + 1)
                    ]  # fmt: skip
                    _write_csv(job / "result.csv", rows)
                    config = ClassifyConfig(
                        weights=Path("model.pt"), rows=rows_, cols=cols, mode=mode,
                        workers=workers, batch_size=64, seed=seed, repeats=REPEATS, block=block,
                    )  # fmt: skip
                    processes = workers if mode == "processes" else 1
                    parallelism = Parallelism(
                        requested=workers, effective=ran(workers), processes=processes,
                        threads={"torch_threads": workers // processes},
                    )  # fmt: skip
                    results = {
                        "cells": cells, "accuracy": 0.99, "flops_per_image": FLOPS_PER_IMAGE,
                        "bytes_per_image": mosaicnet.bytes_per_image(64, training=False),
                        "working_set_bytes": mosaicnet.working_set_bytes(64, training=False),
                    }  # fmt: skip
                    record = classify_outputs.run_record(
                        config, parallelism, results, guard(ran(workers), flag == (name, block))
                    )
                    records.append(_with_env(record).write(job))
    for engine, threads in (("numpy", 1), ("numba", 2), ("torch", 2)):
        cfg = TrainConfig(out="", engine=engine, threads=threads, filters=8, batch_size=32)
        records.append(train_job(root / f"full-{engine}", cfg, ran(threads),
                                 _epochs(TRAIN_RATES[engine, threads], 60000)))  # fmt: skip
    for seed in seeds:
        cfg = TrainConfig(
            out="", model="mosaicnet", engine="torch", threads=2, batch_size=128, seed=seed
        )
        rows = [
            {"epoch": 1, "images": 60000, "seconds": 30.0, "images_per_s": 2000.0,
             "train_loss": 0.2, "train_acc": 0.95, "test_loss": 0.05, "test_acc": 0.985}
        ]  # fmt: skip
        records.append(train_job(root / f"mosaicnet-{seed}", cfg, 2, rows))
    return records


def build(root: Path, **kwargs) -> dict[str, pd.DataFrame]:
    records = fake_results(root / "results", **kwargs)
    out = {name: root / f"results/tables/{name}.csv" for name in tables.TABLE_SCHEMAS}
    return tables.build_tables(records=records, out=out)


@pytest.fixture
def built(tmp_path: Path):
    return tmp_path, build(tmp_path)


def test_tables_read_parameters_from_records_not_paths(tmp_path: Path):
    """Job directories named without any parameter give the same tables."""
    records = fake_results(tmp_path / "results")
    assert not any("~" in str(path) for path in records)
    train = tables.tidy_frame(tables.read_records(records), KINDS["train"])
    numba2 = train[(train["engine"] == "numba") & (train["threads"] == 2)]
    assert set(numba2["filters"]) == {8} and set(numba2["batch_size"]) == {32}
    assert set(numba2["block"].dropna()) == set(DRIFT)


def test_a_record_of_another_schema_version_is_refused(tmp_path: Path):
    path = fake_results(tmp_path / "results")[0]
    data = json.loads(path.read_text())
    data["schema_version"] = 0
    path.write_text(json.dumps(data))
    with pytest.raises(RecordError, match="schema_version 0"):
        tables.read_records([path])


def test_tidy_tables_have_one_row_per_job_epoch_repeat_and_block(built):
    tmp_path, t = built
    blocks = len(DRIFT)
    # paired jobs × epochs, 3 full-length runs × epochs, one MosaicNet epoch
    assert len(t["train"]) == len(TRAIN_RATES) * blocks * EPOCHS + 3 * EPOCHS + 1
    assert len(t["classify"]) == len(GRIDS) * len(CLASSIFY_RATES) * REPEATS * blocks
    assert len(t["jobs"]) == (len(TRAIN_RATES) + len(GRIDS) * len(CLASSIFY_RATES)) * blocks
    for name, frame in t.items():
        on_disk = tables.read_table(tmp_path / f"results/tables/{name}.csv")
        assert len(on_disk) == len(frame), name
    for column in ["engine", "parallelism_requested", "parallelism", "filters", "batch_size",
                   "seed", "block", "run", "epoch", "images", "cum_seconds",
                   "cum_seconds_with_warmup", "env.cpu_model", "roofline_gflops",
                   "others_cpu_share", "flagged",
                   "numba_threads", "flops_per_image", "warmup_s"]:  # fmt: skip
        assert column in t["train"].columns, column
    full = t["train"][(t["train"]["run"] == "full") & (t["train"]["engine"] == "numba")]
    assert full["cum_seconds_with_warmup"].tolist() == pytest.approx(
        [0.25 + 60000 / 7600 * e for e in (1, 2)]
    )
    for column in ["mode", "parallelism_requested", "parallelism", "grid", "repeat", "block",
                   "end_to_end_cells_per_s", "env.hostname"]:  # fmt: skip
        assert column in t["classify"].columns, column


def test_ratios_are_paired_inside_blocks(built):
    """Rates drift ±30% between blocks, every ratio is exact: the interval collapses on it."""
    _, t = built
    summary = t["summary"]
    train = summary[(summary["study"] == "train") & (summary["model"] == "tinycnn")]
    numba2 = train[(train["engine"] == "numba") & (train["parallelism"] == 2)].iloc[0]
    assert numba2["blocks"] == len(DRIFT)
    assert numba2["speedup"] == pytest.approx(1.9)
    assert numba2["speedup_low"] == pytest.approx(1.9)
    assert numba2["speedup_high"] == pytest.approx(1.9)
    assert numba2["speedup_verdict"] == "higher"
    assert numba2["efficiency"] == pytest.approx(0.95)
    assert numba2["baseline"] == "numba 1 thread"
    # the rate itself is summarised over blocks: geometric mean, with the drift's spread
    geo = 7600.0 * np.prod(list(DRIFT.values())) ** (1 / len(DRIFT))
    assert numba2["rate"] == pytest.approx(geo)
    assert numba2["rate_low"] < geo < numba2["rate_high"]
    gflops = geo * flops_per_image(8, training=True) / 1e9
    assert numba2["gflops"] == pytest.approx(gflops)
    assert numba2["roofline_gflops"] == pytest.approx(SGEMM[2])  # the jobs' own probes
    assert numba2["warmup_s"] == pytest.approx(0.25)
    assert numba2["accuracy"] == pytest.approx(0.94)  # the full-length run's last epoch
    assert train[train["engine"] == "numpy"].iloc[0]["speedup_verdict"] == "baseline"

    classify = summary[summary["study"] == "classify"]
    assert len(classify) == len(GRIDS) * len(CLASSIFY_RATES)
    proc = classify[(classify["mode"] == "processes") & (classify["grid"] == "20x30")].iloc[0]
    assert proc["speedup"] == pytest.approx(9000 / 5000)
    assert proc["efficiency"] == pytest.approx(0.9)
    assert proc["baseline"] == "sequential"
    # payback: 2.5 s more start-up over (1/5000 - 1/9000) s saved per cell, at each block's speed
    paybacks = [2.5 / ((1 / 5000 - 1 / 9000) / speed) for speed in DRIFT.values()]
    assert proc["payback_cells"] == pytest.approx(np.median(paybacks))
    assert proc["payback_cells_min"] == pytest.approx(min(paybacks))
    assert proc["end_to_end_speedup"] < 1  # 600 cells cannot pay 2.5 s of start-up back

    comparisons = t["comparisons"]
    row = comparisons[
        (comparisons["subject"] == "numba 2 threads")
        & (comparisons["reference"] == "numpy 1 thread")
    ].iloc[0]
    assert row["ratio"] == pytest.approx(7.6) and row["verdict"] == "higher"


def test_findings_state_intervals_and_base_cases(built):
    _, t = built
    text = "\n".join(report.findings(t["summary"], t["comparisons"]))
    assert "numba 2 threads (F=8, B=32): 1.90× [1.90, 1.90] faster than numba 1 thread at" in text
    assert "numba 2 threads is 7.60× [7.60, 7.60] faster than numpy 1 thread" in text
    assert "start-up is paid back from about" in text
    assert "⚠" not in text


def test_each_configuration_gets_its_roofs_and_the_lower_one_binds(built):
    """Arithmetic intensity is counted FLOPs over the model's compulsory bytes; the bandwidth
    that applies is the L2 triad where a step's working set fits the probed L2, else memory;
    the lower roof binds, and the fraction of it reached has its interval over blocks."""
    _, t = built
    summary = t["summary"]
    train = summary[(summary["study"] == "train") & (summary["engine"] == "numba")]
    two = train[train["parallelism"] == 2].iloc[0]
    intensity = flops_per_image(8, training=True) / 40_277.0  # spec.bytes_per_image(8, 32)
    assert two["bytes_per_item"] == pytest.approx(40_277.0)
    assert two["arithmetic_intensity"] == pytest.approx(intensity)
    # 557,904 bytes per step fit the 2 threads' 4 MiB of L2: the L2 roof, 150 GB/s, applies
    assert two["working_set_bytes"] == 557_904
    assert (two["bandwidth_applies"], two["bandwidth_gbs"]) == ("cache", pytest.approx(150.0))
    assert two["bandwidth_roof_gflops"] == pytest.approx(intensity * 150.0)
    assert two["binding_roof"] == "compute"
    assert two["attainable_gflops"] == pytest.approx(SGEMM[2])
    assert two["attainable_fraction"] == pytest.approx(two["roofline_fraction"])
    low, high = two["attainable_fraction_low"], two["attainable_fraction_high"]
    assert low < two["attainable_fraction"] < high
    assert two["gflops_low"] < two["gflops"] < two["gflops_high"]

    # Classification at B=64 touches 5.4 MB a batch, more than any L2 here: memory binds.
    classify = summary[(summary["study"] == "classify") & (summary["grid"] == "20x30")]
    intensity = FLOPS_PER_IMAGE / mosaicnet.bytes_per_image(64, training=False)
    seq = classify[classify["mode"] == "sequential"].iloc[0]
    assert (seq["bandwidth_applies"], seq["bandwidth_gbs"]) == ("memory", pytest.approx(1.0))
    assert seq["binding_roof"] == "bandwidth"
    assert seq["attainable_gflops"] == pytest.approx(intensity * BANDWIDTH[1][1])
    assert seq["attainable_fraction"] == pytest.approx(seq["gflops"] / seq["attainable_gflops"])
    proc = classify[classify["mode"] == "processes"].iloc[0]  # two processes, a batch each
    assert proc["working_set_bytes"] == 2 * mosaicnet.working_set_bytes(64, training=False)

    jobs = t["jobs"]
    job = jobs[(jobs["engine"] == "numba") & (jobs["parallelism"] == 2)].iloc[0]
    assert job["attainable_fraction"] == pytest.approx(job["gflops"] / SGEMM[2])
    assert job["binding_roof"] == "compute"

    text = "\n".join(report.findings(summary, t["comparisons"]))
    assert (
        "Roofline of training F=8, B=32 (6.85 FLOP/byte): for numba 1 thread the compute roof "
        "binds at 100 GFLOP/s, of which it reached 1.0% [" in text
    )
    assert (
        "for sequential 1 worker the memory bandwidth roof (1 GB/s) binds at 70.7 GFLOP/s, of "
        "which it reached 50% [" in text
    )


def test_attainable_rate_and_binding_roof_on_synthetic_rows():
    """min(compute roof, intensity × the bandwidth that applies), row by row."""
    base = {"flops_per_item": 1e6, "bytes_per_item": 1e5, "working_set_bytes": 1e6,
            "bandwidth_cache_bytes": 2e6, "bandwidth_cache_gbs": 50.0,
            "bandwidth_memory_gbs": 5.0, "roofline_gflops": 100.0}  # fmt: skip
    rows = [
        base,  # fits the L2: 10 FLOP/B × 50 GB/s = 500 GFLOP/s over the 100 of compute
        {**base, "working_set_bytes": 4e6},  # leaves it: 10 × 5 = 50 under 100
        {**base, "roofline_gflops": 500.0},  # a tie: compute
        {**base, "bandwidth_cache_gbs": None, "bandwidth_cache_bytes": None},  # no L2 probe
        {**base, "bytes_per_item": None},  # a record without the byte count
        {**base, "bandwidth_memory_gbs": None, "working_set_bytes": 4e6},  # nor the probe
    ]
    roofs = tables.roof_columns(pd.DataFrame(rows))
    assert list(roofs["bandwidth_applies"]) == ["cache", "memory", "cache", "memory", "cache", ""]
    assert list(roofs["arithmetic_intensity"].iloc[:4]) == [10.0] * 4
    assert roofs["bandwidth_roof_gflops"].iloc[:4].tolist() == [500.0, 50.0, 500.0, 50.0]
    assert roofs["attainable_gflops"].iloc[:4].tolist() == [100.0, 50.0, 500.0, 50.0]
    assert list(roofs["binding_roof"]) == ["compute", "bandwidth", "compute", "bandwidth", "", ""]
    assert roofs["attainable_gflops"].iloc[4:].isna().all()


@pytest.mark.slow  # seconds: spawns processes or trains
def test_records_without_bandwidth_or_bytes_still_make_tables(tmp_path: Path):
    """Records written before the bandwidth probes and byte counts read as before: the compute
    roof and its fraction stay, every bandwidth column is missing (NaN), and the figures draw."""
    records = fake_results(tmp_path / "results")
    for path in records:
        data = json.loads(path.read_text())
        for key in [k for k in data["interference"] if k.startswith("bandwidth_")]:
            del data["interference"][key]
        for key in ("bytes_per_image", "working_set_bytes"):
            del data["results"][key]
        path.write_text(json.dumps(data))
    out = {name: tmp_path / f"tables/{name}.csv" for name in tables.TABLE_SCHEMAS}
    t = tables.build_tables(records=records, out=out)
    summary = tables.read_table(out["summary"])
    assert summary["roofline_fraction"].notna().all()
    for column in ("arithmetic_intensity", "bandwidth_memory_gbs", "bandwidth_roof_gflops",
                   "attainable_gflops", "attainable_fraction", "binding_roof"):  # fmt: skip
        assert summary[column].isna().all(), column
    assert not any("Roofline of" in s for s in report.findings(t["summary"], t["comparisons"]))
    written = figures.draw_all(out, tmp_path / "figures")
    assert {p.stem for p in written} == {f.id for f in registry.table_figures()}


def test_the_roofline_figure_draws_each_probes_roofs_and_labelled_points(built):
    tmp_path, _ = built
    summary = tables.read_table(tmp_path / "results/tables/summary.csv")
    fig = figures.roofline(summary)
    train_ax = fig.axes[0]
    assert (train_ax.get_xscale(), train_ax.get_yscale()) == ("log", "log")
    roofs = [line for line in train_ax.get_lines() if len(line.get_xdata()) > 2]
    # two probes (1 and 2 threads), each a memory (solid) and an L2 (dashed) slope
    assert len(roofs) == 4
    assert sorted({max(line.get_ydata()) for line in roofs}) == pytest.approx([100.0, 190.0])
    labels = {text.get_text() for text in train_ax.texts}
    assert {"numba 1 thread", "numba 2 threads", "numpy 1 thread", "torch 2 threads"} <= labels
    legend = [text.get_text() for text in train_ax.get_legend().get_texts()]
    assert legend == [
        "cpu (1 threads): 100 GFLOP/s, 1 GB/s memory, 80 GB/s L2",
        "cpu (2 threads): 190 GFLOP/s, 1.5 GB/s memory, 150 GB/s L2",
    ]
    plt.close(fig)


def test_noisy_blocks_give_not_resolved_and_flags_mark_findings(tmp_path: Path):
    """A speedup whose interval contains 1 is reported as not resolved, never as a direction;
    a flagged job marks the findings that rest on it and opens the report with a banner."""
    records = fake_results(tmp_path / "results", flag=("tinycnn-numba-2-0", 2))
    # Make numba at 2 threads faster in one block and slower in the others.
    for path in records:
        record = RunRecord.read(path)
        params = record.params
        if params.get("engine") == "numba" and params["threads"] == 2 and params["block"]:
            block = record.params["block"]
            metrics = pd.read_csv(path.parent / "metrics.csv")
            factor = {1: 0.4, 2: 1.6, 3: 0.5}[block]  # ratios 0.76, 3.04, 0.95
            metrics["seconds"] /= factor
            metrics["images_per_s"] *= factor
            metrics.to_csv(path.parent / "metrics.csv", index=False)
    out = {name: tmp_path / f"t/{name}.csv" for name in tables.TABLE_SCHEMAS}
    t = tables.build_tables(records=records, out=out)
    numba2 = t["summary"][(t["summary"]["engine"] == "numba") & (t["summary"]["parallelism"] == 2)]
    row = numba2.iloc[0]
    assert row["speedup_low"] < 1 < row["speedup_high"]
    assert row["speedup_verdict"] == "not resolved"
    assert row["flagged_blocks"] == 1
    assert "numba 2 threads F=8 B=32 seed 0 block 2" in row["flagged_jobs"]
    lines = [s for s in report.findings(t["summary"], t["comparisons"]) if "numba 2 threads (" in s]
    assert lines and "not resolved on this machine" in lines[0] and "faster" not in lines[0]
    assert "⚠" in lines[0]
    banner = report.banner_html(t["jobs"])
    assert "Interference detected in 1 of" in banner and "block 2" in banner
    # In the page: the headline, then the banner, then the findings, the row marked ⚠.
    page = report.render("noisy", t, [], ENV, "")
    sections = [page.index(f'<section id="{s}"') for s in ("headline", "interference", "findings")]
    assert sections == sorted(sections)
    speedup = "training F=8, B=32: numba 2 threads over numba 1 thread"
    row = next(r for r in findings_rows(page) if r["comparison"] == speedup)
    assert (row["verdict"], row["interference"]) == ("not resolved", "⚠ 1")
    assert report.headline(t["summary"]).iloc[0]["flagged_blocks"] == 1


def test_the_report_opens_with_a_headline_per_workload(built):
    """Per workload (training; classification per grid) its fastest configuration, with its
    rate, speedup over its base, efficiency and roofline fraction, each with its interval."""
    _, t = built
    top = report.headline(t["summary"])
    assert list(top["workload"]) == [
        "training F=8, B=32", "classification 10x10, B=64", "classification 20x30, B=64"
    ]  # fmt: skip
    train = top.iloc[0]
    geo = 7600.0 * np.prod(list(DRIFT.values())) ** (1 / len(DRIFT))
    assert (train["configuration"], train["baseline"]) == ("numba 2 threads", "numba 1 thread")
    assert train["rate"] == pytest.approx(geo) and train["rate_low"] < geo < train["rate_high"]
    assert [train[c] for c in ("speedup", "speedup_low", "speedup_high")] == pytest.approx(
        [1.9, 1.9, 1.9]
    )
    assert train["efficiency"] == pytest.approx(0.95)
    gflops = geo * flops_per_image(8, training=True) / 1e9
    assert train["roofline_fraction"] == pytest.approx(gflops / SGEMM[2])
    assert train["roofline_fraction_low"] < train["roofline_fraction"]
    for _, row in top.iloc[1:].iterrows():
        assert (row["configuration"], row["baseline"]) == ("processes 2 workers", "sequential")
        assert row["speedup"] == pytest.approx(1.8) and row["efficiency"] == pytest.approx(0.9)
        assert row["flagged_blocks"] == 0

    page = report.render("synthetic", t, [], ENV, "")
    order = ["headline", "findings", "figures", "method", "summary", "tables"]
    at = [page.index(f'<section id="{name}">') for name in order]
    assert at == sorted(at)
    head = html.unescape(re.sub(r"<[^>]+>", " ", page[at[0] : at[1]]))
    for text in ("training F=8, B=32", "numba 2 threads", "1.90× [1.90, 1.90]",
                 "over numba 1 thread", "95% [95, 95]", "classification 20x30, B=64",
                 "processes 2 workers", "1.80× [1.80, 1.80]", "over sequential"):  # fmt: skip
        assert text in head, text
    rows = findings_rows(page)
    speedup = "training F=8, B=32: numba 2 threads over numba 1 thread"
    row = next(r for r in rows if r["comparison"] == speedup)
    assert [row[c] for c in ("ratio", "95% interval", "verdict", "blocks", "interference")] == [
        "1.90×", "[1.90, 1.90]", "faster", "3", ""
    ]  # fmt: skip
    assert "faster than numba 1 thread at" in row["title"]
    engines = "training F=8, B=32: numba 2 threads over numpy 1 thread"
    assert next(r for r in rows if r["comparison"] == engines)["ratio"] == "7.60×"
    assert 'class="data findings sortable"' in page and "<script>" in page


def test_blocks_may_run_in_any_order_and_no_ratio_pairs_two_code_versions(tmp_path: Path):
    """Pairing is by family job, not by the order of blocks: a block that ran after a later one
    is not flagged. A configuration measured with another code version than its baseline is
    never divided by it: its speedup is not formed, and the reason names the versions."""
    records = fake_results(tmp_path / "results")
    runs = tables.read_records(records)
    train = tables.tidy_frame(runs, KINDS["train"])
    classify = tables.tidy_frame(runs, KINDS["classify"])
    late = train["block"] == 1
    train.loc[late, "env.utc_time"] = "2099-01-01T00:00:00+00:00"
    assert not tables.jobs_frame(train, classify)["flagged"].any()

    numba2 = (train["engine"] == "numba") & (train["parallelism_requested"] == 2)
    train.loc[numba2, "code_version"] = "bbbbbbbbbbbb"
    jobs = tables.jobs_frame(train, classify)
    summary = tables.summarize(jobs, train, classify)
    row = summary[(summary["engine"] == "numba") & (summary["parallelism_requested"] == 2)]
    assert row["speedup_verdict"].tolist() == ["not formed"]
    assert "different code versions" in row["speedup_not_formed"].iloc[0]
    assert "bbbbbbbbbbbb" in row["code_version"].iloc[0]
    one = summary[(summary["engine"] == "numba") & (summary["parallelism_requested"] == 1)]
    assert one["speedup_verdict"].tolist() == ["baseline"]


@pytest.mark.slow  # seconds: spawns processes or trains
def test_figures_and_report_are_written_and_self_contained(built):
    tmp_path, _ = built
    tdir, fdir = tmp_path / "results/tables", tmp_path / "results/figures"
    paths = {name: tdir / f"{name}.csv" for name in tables.TABLE_SCHEMAS}
    written = figures.draw_all(paths, fdir)
    stems = {p.stem for p in written}
    assert stems == {f.id for f in registry.table_figures()}
    for path in written:
        assert path.stat().st_size > 1000, path
        if path.suffix == ".png":
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # A big noisy mask (a 1000x1000 mosaic renders thousands of pixels a side).
    noise = np.random.default_rng(0).integers(0, 255, (2000, 3000, 3), dtype=np.uint8)
    Image.fromarray(noise).save(fdir / "mask.png")
    pngs = sorted(fdir.glob("*.png"))
    record = next(tmp_path.glob("results/mosaicnet-0/run.json"))
    out = report.write_report(
        out=tmp_path / "results/report.html",
        title="synthetic <study>",
        tables=paths,
        figures=pngs,
        record=record,
        config_yaml="train:\n  tinycnn:\n    engines: [numpy]\n",
    )
    page = out.read_text()
    assert "synthetic &lt;study&gt;" in page  # escaped
    assert page.count('src="data:image/png;base64,') == len(pngs) - 1
    assert page.count('src="data:image/jpeg;base64,') == 1  # the mask, downscaled
    assert len(page) < 3_000_000  # the 18 MB noise image does not bloat the page
    # Self-contained: no external resource of any kind.
    assert not re.search(r'(src|href)="(https?:)?//', page)
    assert "<link" not in page
    assert "engines: [numpy]" in page and "Test CPU" in page
    assert "1.90× [1.90, 1.90] faster than numba 1 thread" in page
    assert 'id="method"' in page and "Hoefler" in page and "12. Plots" in page
    assert 'id="interference"' not in page  # nothing flagged


@pytest.mark.slow  # seconds: spawns processes or trains
def test_a_study_of_one_engine_and_one_mode_has_no_comparisons_and_still_reports(
    tmp_path: Path,
):
    """numba at 1 and 2 threads, classify sequential on one grid: nothing to compare engine
    against engine or mode against mode, which is a valid study, not a damaged table."""

    def kept(record: RunRecord) -> bool:
        if record.command == "classify":
            return record.params["mode"] == "sequential" and record.params["grid"] == "10x10"
        return record.model == "mosaicnet" or record.params["engine"] == "numba"

    records = [path for path in fake_results(tmp_path / "results") if kept(RunRecord.read(path))]
    paths = {name: tmp_path / f"results/tables/{name}.csv" for name in tables.TABLE_SCHEMAS}
    built = tables.build_tables(records=records, out=paths)
    assert built["comparisons"].empty and len(built["summary"]) > 0
    assert tables.read_table(paths["comparisons"]).empty  # a header, no rows: accepted
    written = figures.draw_all(paths, tmp_path / "results/figures")
    assert {p.stem for p in written} == {f.id for f in registry.table_figures()}
    record = next(tmp_path.glob("results/mosaicnet-0/run.json"))
    page = report.write_report(
        out=tmp_path / "results/report.html", title="one engine", tables=paths,
        figures=[p for p in written if p.suffix == ".png"], record=record, config_yaml="",
    ).read_text()  # fmt: skip
    assert "numba 2 threads" in page and "faster than numba 1 thread" in page
    path = paths["jobs"]
    path.write_text(path.read_text().splitlines()[0] + "\n")
    with pytest.raises(tables.TableError, match="has no rows"):  # any other table must have rows
        tables.read_table(path)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda text: text[: len(text) // 2] + '"unterminated\n', "damaged"),
        (lambda text: text.replace(",7600", ",fast", 1) if ",7600" in text else "x", None),
        (lambda text: text.splitlines()[0] + "\n", "has no rows"),
        (lambda text: text.replace("speedup_low", "speedup_lo", 1), "lacks column"),
    ],
)
def test_damaged_tables_are_refused_with_one_line(built, damage, message):
    tmp_path, _ = built
    path = tmp_path / "results/tables/summary.csv"
    path.write_text(damage(path.read_text()))
    with pytest.raises(tables.TableError) as err:
        tables.read_table(path)
    text = str(err.value)
    assert str(path) in text and "\n" not in text and "re-run the tables step" in text
    if message:
        assert message in text


def test_a_non_number_in_a_numeric_column_is_named(built):
    tmp_path, _ = built
    path = tmp_path / "results/tables/jobs.csv"
    frame = pd.read_csv(path)
    frame["rate"] = frame["rate"].astype(object)
    frame.loc[3, "rate"] = "fast"
    frame.to_csv(path, index=False)
    with pytest.raises(tables.TableError, match=r"column 'rate' holds 'fast' in row 5"):
        tables.read_table(path)


def test_effective_threads_below_requested_are_recorded(tmp_path: Path):
    row = {"epoch": 1, "images": 100, "seconds": 1.0, "images_per_s": 100.0, "train_loss": 1.0,
           "train_acc": 0.5, "test_loss": 1.0, "test_acc": 0.5}  # fmt: skip
    cfg = TrainConfig(out="", engine="numba", threads=4, filters=8, batch_size=32, block=1)
    path = train_job(tmp_path / "job", cfg, effective=2, metrics=[row])
    runs = tables.read_records([path])
    frame = tables.tidy_frame(runs, KINDS["train"])
    assert frame.loc[0, "parallelism_requested"] == 4
    assert frame.loc[0, "parallelism"] == 2
    assert frame.loc[0, "threads"] == 4  # the parameter as asked, never overwritten
    summary = tables.summarize(tables.jobs_frame(frame, pd.DataFrame()), frame)
    assert summary.loc[0, "parallelism"] == 2 and summary.loc[0, "parallelism_requested"] == 4
    assert np.isnan(summary.loc[0, "speedup"])  # no 1-thread baseline in this family
    assert any("asked for 4" in s for s in report.findings(summary))


def test_a_repeated_option_is_one_cell(tmp_path: Path):
    """`--mirror` given twice is a list in the record's parameters: one table cell holds it."""
    cfg = TrainConfig(out="", engine="numpy", threads=1, filters=8, batch_size=32, block=1)
    job = train_job(tmp_path / "job", cfg, 1, _epochs(1000.0))
    record = RunRecord.read(job)
    mirrors = ["https://a.example/mnist/", "file:///srv/mnist/"]
    record = dataclasses.replace(record, params={**record.params, "mirror": mirrors})
    assert record.columns()["mirror"] == " ".join(mirrors)
    record.write(tmp_path / "job")
    assert (
        tables.tidy_frame([(RunRecord.read(job), job.parent)], KINDS["train"])["mirror"].nunique()
        == 1
    )


@pytest.mark.slow  # seconds: spawns processes or trains
def test_jobs_confined_to_fewer_cpus_keep_their_configurations_apart(tmp_path: Path):
    """Run under `taskset -c 0`, the 2-thread jobs ran with 1 CPU: they stay the 2-thread
    configuration (asked 2, ran 1) in every table and figure, never merged with the 1-thread one."""
    t = build(tmp_path, cpus=1)
    summary = t["summary"]
    numba = summary[(summary["study"] == "train") & (summary["engine"] == "numba")]
    assert sorted(numba["parallelism_requested"]) == [1, 2]
    assert list(numba["parallelism"]) == [1, 1]
    assert len(summary) == len(TRAIN_RATES) + len(GRIDS) * len(CLASSIFY_RATES)
    tdir = tmp_path / "results/tables"
    written = figures.draw_all({n: tdir / f"{n}.csv" for n in tables.TABLE_SCHEMAS}, tmp_path)
    assert {p.stem for p in written} == {f.id for f in registry.table_figures()}


def _move_to_other_machine(path: Path) -> None:
    """Rewrite one run record as if its job had run on a different CPU."""
    data = json.loads(path.read_text())
    data["machine"]["cpu_model"] = "Other CPU"
    data["environment"]["cpu_model"] = "Other CPU"
    path.write_text(json.dumps(data))


@pytest.mark.slow  # seconds: spawns processes or trains
def test_no_ratio_is_formed_across_two_machines(tmp_path: Path):
    """The numba 1-thread baseline and every processes job ran on another CPU: each machine
    gets its own summary rows, and no speedup or comparison divides one machine by the other."""
    records = fake_results(tmp_path / "results")
    moved = []
    for path in records:
        params = json.loads(path.read_text())["params"]
        numba_1 = params.get("engine") == "numba" and params["threads"] == 1
        if (numba_1 and params.get("block")) or params.get("mode") == "processes":
            _move_to_other_machine(path)
            moved.append(path)
    assert moved
    out = {name: tmp_path / f"tables/{name}.csv" for name in tables.TABLE_SCHEMAS}
    t = tables.build_tables(records=records, out=out)
    jobs, summary, comparisons = t["jobs"], t["summary"], t["comparisons"]
    assert jobs["machine"].nunique() == 2
    other = jobs[jobs["machine"].str.contains("Other CPU")]
    assert set(other["engine"].dropna()) == {"numba"} and set(other["mode"].dropna()) == {
        "processes"
    }
    # Every formed ratio pairs jobs of one machine: the speedup's baseline is on its row's machine.
    for _, row in summary[summary["speedup"].notna()].iterrows():
        kind = KINDS[row["study"]]
        base = jobs[(jobs["study"] == row["study"]) & (jobs["machine"] == row["machine"])]
        assert any(kind.is_baseline(r) for r in base.to_dict("records")), row["engine"]
    # numba 2 threads ran here, its 1-thread baseline only there: not formed, with the reason.
    numba2 = summary[(summary["engine"] == "numba") & (summary["parallelism_requested"] == 2)]
    assert len(numba2) == 1 and np.isnan(numba2["speedup"].iloc[0])
    assert numba2["speedup_verdict"].iloc[0] == "not formed"
    assert "ran only on" in numba2["speedup_not_formed"].iloc[0]
    assert "Other CPU" in numba2["speedup_not_formed"].iloc[0]
    # processes ran only there, sequential only here: listed as not formed, never computed.
    procs = comparisons[comparisons["subject"].str.startswith("processes")]
    assert len(procs) and (procs["verdict"] == "not formed").all()
    assert procs["ratio"].isna().all()
    assert (procs["not_formed"].str.contains("different machines")).all()
    # Formed comparisons stay on one machine and keep their exact ratios.
    formed = comparisons[comparisons["verdict"] != "not formed"]
    assert formed["machine"].notna().all() and len(formed)
    text = " ".join(report.findings(summary, comparisons))
    assert "no speedup over numba 1 thread formed" in text and "not formed" in text
    tdir = tmp_path / "tables"
    written = figures.draw_all({n: tdir / f"{n}.csv" for n in tables.TABLE_SCHEMAS}, tmp_path)
    assert {p.stem for p in written} == {f.id for f in registry.table_figures()}
