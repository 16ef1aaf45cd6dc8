"""Tables, figures and report on synthetic job directories written in the CLI contract's format.

The numbers are chosen so that every derived value (speedup, efficiency, roofline fraction,
the findings' sentences) is known exactly.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cnnpar import registry, train
from cnnpar.classify import outputs as classify_outputs
from cnnpar.classify.config import ClassifyConfig
from cnnpar.nets import mosaicnet
from cnnpar.nets.mosaicnet import FLOPS_PER_IMAGE
from cnnpar.nets.tinycnn.spec import flops_per_image
from cnnpar.record import Parallelism, RecordError, RunRecord
from cnnpar.study import figures, report, tables
from cnnpar.train import TrainConfig

ENV = {"cpu_model": "Test CPU", "logical_cores": 2, "hostname": "testhost", "cnnpar": "0.1.0"}
# images/s per (engine, threads): numba scales 1.9× (95% efficiency), torch 1.5×.
TRAIN_RATES = {("numpy", 1): 1000.0, ("numba", 1): 4000.0, ("numba", 2): 7600.0,
               ("torch", 1): 2000.0, ("torch", 2): 3000.0}  # fmt: skip
# cells/s per (mode, workers) on every grid.
CLASSIFY_RATES = {("sequential", 1): 5000.0, ("threads", 2): 8000.0, ("processes", 2): 9000.0}
SGEMM = {1: 100.0, 2: 190.0}
EPOCHS, REPEATS = 3, 2
GRIDS = ["10x10", "20x30"]


def _write_csv(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path, index=False)


def train_job(job: Path, cfg: TrainConfig, effective: int, metrics: list[dict]) -> Path:
    """A training run directory written through the code `cnnpar train` writes with."""
    cfg = cfg.resolved()
    _write_csv(job / "metrics.csv", metrics)
    flops = (
        flops_per_image(cfg.filters, training=True)
        if cfg.model == "tinycnn"
        else mosaicnet.flops_per_image(training=True)
    )
    record = train.run_record(
        cfg,
        Parallelism(
            requested=cfg.threads,
            effective=effective,
            threads={"numba_threads": effective, "torch_threads": effective},
        ),
        results={"flops_per_image": flops, "final_test_acc": metrics[-1]["test_acc"]},
        outputs=["metrics.csv"],
    )
    return _with_env(record).write(job)


def _with_env(record: RunRecord) -> RunRecord:
    return dataclasses.replace(record, environment={**record.environment, **ENV})


def fake_results(root: Path, seeds: tuple[int, ...] = (0,)) -> dict[str, list[Path]]:
    """A results/ tree of run records as the train, classify and info commands write it."""
    out: dict[str, list[Path]] = {"records": [], "env": []}
    for (engine, threads), rate in TRAIN_RATES.items():
        for seed in seeds:
            rows = [
                {"epoch": e, "seconds": 20000 / rate, "images_per_s": rate,
                 "train_loss": 1.0 / e, "train_acc": 0.9 + 0.02 * e,
                 "test_loss": 1.1 / e, "test_acc": 0.9 + 0.02 * e}
                for e in range(1, EPOCHS + 1)
            ]  # fmt: skip
            cfg = TrainConfig(
                out="", engine=engine, threads=threads, filters=8, batch_size=32, seed=seed
            )
            out["records"].append(train_job(root / f"tinycnn-{engine}-{threads}-{seed}", cfg,
                                            threads, rows))  # fmt: skip
    for seed in seeds:
        cfg = TrainConfig(
            out="", model="mosaicnet", engine="torch", threads=2, batch_size=128, seed=seed
        )
        rows = [{"epoch": 1, "seconds": 30.0, "images_per_s": 2000.0, "train_loss": 0.2,
                 "train_acc": 0.95, "test_loss": 0.05, "test_acc": 0.985}]  # fmt: skip
        out["records"].append(train_job(root / f"mosaicnet-{seed}", cfg, 2, rows))
    for grid in GRIDS:
        rows_, cols = (int(v) for v in grid.split("x"))
        cells = rows_ * cols
        for (mode, workers), rate in CLASSIFY_RATES.items():
            for seed in seeds:
                job = root / f"classify-{mode}-{workers}-{grid}-{seed}"
                rows = [
                    {"mode": mode, "workers": workers, "batch_size": 64, "rows": rows_,
                     "cols": cols, "cells": cells, "distinct_digits": cells, "startup_s": 0.5,
                     "classify_s": cells / rate, "total_s": 0.5 + cells / rate,
                     "cells_per_s": rate, "accuracy": 0.99, "torch_threads": 1,
                     "repeat": repeat}
                    for repeat in range(1, REPEATS + 1)
                ]  # fmt: skip
                _write_csv(job / "result.csv", rows)
                config = ClassifyConfig(
                    weights=Path("model.pt"), rows=rows_, cols=cols, mode=mode,
                    workers=workers, batch_size=64, seed=seed, repeats=REPEATS,
                )  # fmt: skip
                processes = workers if mode == "processes" else 1
                parallelism = Parallelism(
                    requested=workers, effective=workers, processes=processes,
                    threads={"torch_threads": workers // processes},
                )  # fmt: skip
                results = {"cells": cells, "accuracy": 0.99, "flops_per_image": FLOPS_PER_IMAGE}
                record = classify_outputs.run_record(config, parallelism, results)
                out["records"].append(_with_env(record).write(job))
    for threads, gflops in SGEMM.items():
        path = root / f"env/threads~{threads}/info.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({**ENV, "sgemm_gflops": gflops, "sgemm_threads": threads}))
        out["env"].append(path)
    return out


@pytest.fixture
def built(tmp_path: Path):
    files = fake_results(tmp_path / "results")
    out = tmp_path / "results/tables"
    train, classify, summary = tables.build_tables(
        records=files["records"],
        env_infos=files["env"],
        train_out=out / "train.csv",
        classify_out=out / "classify.csv",
        summary_out=out / "summary.csv",
    )
    return tmp_path, train, classify, summary


def test_tables_read_parameters_from_records_not_paths(tmp_path: Path):
    """Job directories named without any parameter give the same tables."""
    files = fake_results(tmp_path / "results")
    assert not any("~" in str(path) for path in files["records"])
    train = tables.train_frame(tables.read_records(files["records"]))
    numba2 = train[(train["engine"] == "numba") & (train["threads"] == 2)]
    assert set(numba2["filters"]) == {8} and set(numba2["batch_size"]) == {32}


def test_a_record_of_another_schema_version_is_refused(tmp_path: Path):
    files = fake_results(tmp_path / "results")
    path = files["records"][0]
    data = json.loads(path.read_text())
    data["schema_version"] = 0
    path.write_text(json.dumps(data))
    with pytest.raises(RecordError, match="schema_version 0"):
        tables.read_records([path])


def test_tidy_tables_have_one_row_per_job_epoch_and_repeat(built):
    tmp_path, train, classify, _ = built
    assert len(train) == len(TRAIN_RATES) * EPOCHS + 1  # + one MosaicNet epoch
    assert len(classify) == len(GRIDS) * len(CLASSIFY_RATES) * REPEATS
    on_disk = pd.read_csv(tmp_path / "results/tables/train.csv")
    assert len(on_disk) == len(train)
    for column in ["engine", "threads_requested", "threads", "filters", "batch_size", "seed",
                   "epoch", "cum_seconds", "env.cpu_model", "roofline_gflops",
                   "numba_threads", "env.hostname", "flops_per_image"]:  # fmt: skip
        assert column in train.columns, column
    numba2 = train[(train["engine"] == "numba") & (train["threads"] == 2)]
    assert numba2["cum_seconds"].tolist() == pytest.approx([20000 / 7600 * e for e in (1, 2, 3)])
    assert set(train.loc[train["model"] == "mosaicnet", "engine"]) == {"torch"}
    for column in ["mode", "workers_requested", "workers", "grid", "repeat", "env.hostname"]:
        assert column in classify.columns, column
    assert sorted(classify["repeat"].unique()) == list(range(1, REPEATS + 1))


def test_summary_speedup_efficiency_and_roofline(built):
    _, _, _, summary = built
    train = summary[(summary["study"] == "train") & (summary["model"] == "tinycnn")]
    numba2 = train[(train["engine"] == "numba") & (train["parallelism"] == 2)].iloc[0]
    assert numba2["speedup"] == pytest.approx(1.9)
    assert numba2["efficiency"] == pytest.approx(0.95)
    assert numba2["rate_iqr"] == pytest.approx(0.0)
    assert numba2["samples"] == EPOCHS
    gflops = 7600.0 * flops_per_image(8, training=True) / 1e9
    assert numba2["gflops"] == pytest.approx(gflops)
    assert numba2["roofline_fraction"] == pytest.approx(gflops / SGEMM[2])
    numpy1 = train[train["engine"] == "numpy"].iloc[0]
    assert numpy1["speedup"] == pytest.approx(1.0)

    classify = summary[summary["study"] == "classify"]
    assert len(classify) == len(GRIDS) * len(CLASSIFY_RATES)
    proc = classify[(classify["mode"] == "processes") & (classify["grid"] == "20x30")].iloc[0]
    assert proc["speedup"] == pytest.approx(9000 / 5000)
    assert proc["efficiency"] == pytest.approx(0.9)
    assert proc["seconds_per_item"] == pytest.approx(1 / 9000)
    assert proc["gflops"] == pytest.approx(9000 * FLOPS_PER_IMAGE / 1e9)
    assert proc["baseline"] == "sequential"


def test_findings_state_the_ratios(built):
    _, _, _, summary = built
    text = "\n".join(report.findings(summary))
    assert "numba 2 threads (F=8, B=32): 1.90× over 1 thread (95% efficiency)." in text
    assert "processes 2 workers on 20x30 (B=64): 1.80× over sequential (90% efficiency)." in text
    # numba at 2 threads is the fastest: 7600 / 3000 (torch at 2) and 7600 / 1000 (numpy).
    assert (
        "numba 2 threads at 7,600 images/s, 2.5× torch (2 threads), 7.6× numpy (1 thread)" in text
    )


def test_figures_and_report_are_written_and_self_contained(built):
    tmp_path, _, _, _ = built
    tdir, fdir = tmp_path / "results/tables", tmp_path / "results/figures"
    written = figures.draw_all(
        tdir / "train.csv", tdir / "classify.csv", tdir / "summary.csv", fdir
    )
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
    out = report.write_report(
        out=tmp_path / "results/report.html",
        title="synthetic <study>",
        train_csv=tdir / "train.csv",
        classify_csv=tdir / "classify.csv",
        summary_csv=tdir / "summary.csv",
        figures=pngs,
        env_json=tmp_path / "results/env/threads~2/info.json",
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
    assert "1.90× over 1 thread" in page


def test_empty_tables_still_give_every_figure(tmp_path: Path):
    tdir = tmp_path / "tables"
    tables.write_frame(tdir / "train.csv", pd.DataFrame())
    tables.write_frame(tdir / "classify.csv", pd.DataFrame())
    tables.write_frame(tdir / "summary.csv", tables.summarize(pd.DataFrame(), pd.DataFrame()))
    written = figures.draw_all(
        tdir / "train.csv", tdir / "classify.csv", tdir / "summary.csv", tmp_path / "fig"
    )
    assert len(written) == 2 * len(registry.table_figures())


def test_effective_threads_below_requested_are_recorded(tmp_path: Path):
    row = {"epoch": 1, "seconds": 1.0, "images_per_s": 100.0, "train_loss": 1.0,
           "train_acc": 0.5, "test_loss": 1.0, "test_acc": 0.5}  # fmt: skip
    cfg = TrainConfig(out="", engine="numba", threads=4, filters=8, batch_size=32)
    path = train_job(tmp_path / "job", cfg, effective=2, metrics=[row])
    frame = tables.train_frame(tables.read_records([path]))
    assert frame.loc[0, "threads_requested"] == 4
    assert frame.loc[0, "threads"] == 2
    summary = tables.summarize_train(frame)
    assert summary.loc[0, "parallelism"] == 2 and summary.loc[0, "parallelism_requested"] == 4
    assert np.isnan(summary.loc[0, "speedup"])  # no 1-thread baseline in this family
    assert any("asked for 4" in s for s in report.findings(summary))
