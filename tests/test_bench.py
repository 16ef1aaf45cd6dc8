"""`cnnpar bench train` as a small study: the target verdicts on synthetic intervals, a tiny
bench (2 blocks, numpy and numba at 1 and 2 threads, 512 digits, 0.05 s per run) whose runs
follow the study's plan and write ordinary `cnnpar train` records, its printout, and the
one-line refusals of bad input. No test looks at a measured speed, ratio or verdict."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from cnnpar import train
from cnnpar.bench import common
from cnnpar.bench.train import train_bench
from cnnpar.cli import main
from cnnpar.measure import interference
from cnnpar.measure.intervals import Interval
from cnnpar.measure.machine import this_machine
from cnnpar.record import RecordError, RunRecord
from cnnpar.study import plan
from cnnpar.study.tables import SUMMARY_COLUMNS, read_table

ENGINES, THREADS, BLOCKS = ("numpy", "numba"), (1, 2), 2


# --- verdicts ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("low", "high", "n", "expected"),
    [
        (0.45, 0.55, 5, "met"),
        (0.40, 0.55, 5, "met"),  # the low end reaching the threshold is enough
        (0.30, 0.39, 5, "missed"),
        (0.30, 0.40, 5, "not resolved"),  # the high end touches it: not below
        (0.35, 0.45, 5, "not resolved"),
        (math.nan, math.nan, 1, "not resolved"),  # one block: no interval
        (0.5, 0.6, 1, "not resolved"),
    ],
)
def test_verdict_follows_the_interval(low: float, high: float, n: int, expected: str) -> None:
    estimate = (low + high) / 2 if math.isfinite(low) else 0.9
    assert common.verdict(Interval(estimate, low, high, n), 0.40) == expected


def test_targets_are_declared_once_on_summary_columns() -> None:
    assert [(t.study, t.statistic, t.threshold) for t in common.TARGETS] == [
        ("train", "roofline_fraction", 0.40),
        ("train", "speedup", 1.6),
        ("classify", "roofline_fraction", 0.85),
    ]
    for target in common.TARGETS:
        for column in (*target.where, *(f"{target.statistic}{s}" for s in ("", "_low", "_high"))):
            assert column in SUMMARY_COLUMNS, (target.name, column)


def test_target_interval_reads_its_own_summary_row() -> None:
    rows = [
        {"study": "train", "engine": "numba", "filters": 8, "batch_size": 32,
         "parallelism_requested": p, "blocks": 3, "speedup": s, "speedup_low": s - 0.05,
         "speedup_high": s + 0.05}
        for p, s in ((1, 1.0), (2, 1.7))
    ]  # fmt: skip
    summary = pd.DataFrame(rows).reindex(columns=SUMMARY_COLUMNS)
    speedup = next(t for t in common.TARGETS if t.statistic == "speedup")
    interval = common.target_interval(speedup, summary)
    assert (interval.estimate, interval.low, interval.high) == pytest.approx((1.7, 1.65, 1.75))
    assert interval.n == 3, "the row's blocks"
    assert common.verdict(interval, speedup.threshold) == "met"
    classify = next(t for t in common.TARGETS if t.study == "classify")
    assert common.target_interval(classify, summary) is None, "not measured"


def test_old_bench_records_are_refused_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"schema_version": 3, "command": "bench-train"}))
    with pytest.raises(RecordError, match="old `cnnpar bench` record") as err:
        RunRecord.read(path)
    assert "\n" not in str(err.value)


# --- a tiny bench --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The bench on tiny sizes; the compute probe is a constant (its cost, not its value,
    matters here) and the run functions log each call before running it."""
    tmp = tmp_path_factory.mktemp("bench")
    calls: list[tuple[int | None, str, list[int]]] = []
    lines: list[str] = []
    real_run, real_interleaved = train.run, train.run_interleaved

    def run(cfg: train.TrainConfig, *args: Any, **kwargs: Any) -> Any:
        calls.append((cfg.block, cfg.engine, [cfg.threads]))
        return real_run(cfg, *args, **kwargs)

    def run_interleaved(cfg: train.TrainConfig, counts: list[int]) -> Any:
        calls.append((cfg.block, cfg.engine, list(counts)))
        return real_interleaved(cfg, counts)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(interference, "cpu_probe", lambda threads: 10.0 * threads)
        patch.setattr(train, "run", run)
        patch.setattr(train, "run_interleaved", run_interleaved)
        summary, checks = train_bench(
            ENGINES, THREADS, BLOCKS, time_budget=0.05, out=tmp / "out",
            csv_path=tmp / "rows" / "summary.csv", train_size=512, test_size=100,
            timing_lock=str(tmp / "lock"), echo=lines.append,
        )  # fmt: skip
    return {"out": tmp / "out", "csv": tmp / "rows" / "summary.csv", "calls": calls,
            "lines": lines, "summary": summary, "checks": checks}  # fmt: skip


@pytest.mark.slow  # seconds: spawns processes or trains
def test_runs_follow_the_plan(bench: dict[str, Any]) -> None:
    section = {"threads": list(THREADS), "ranks": [], "filters": [8], "batch_sizes": [32],
               "seeds": [0]}  # fmt: skip
    configs = plan.tinycnn_configs(ENGINES, section)
    planned = [
        (block, run.subject, [c["threads"] for c in run.configs])
        for block in range(1, BLOCKS + 1)
        for run in plan.family_runs("train", configs, block)
    ]
    assert bench["calls"] == planned
    # numba switches threads: one interleaved run; even blocks reverse the order.
    assert planned == [(1, "numpy", [1]), (1, "numba", [1, 2]),
                       (2, "numba", [1, 2]), (2, "numpy", [1])]  # fmt: skip


@pytest.mark.slow  # shares a module fixture that runs the command
def test_every_run_writes_an_ordinary_train_record(bench: dict[str, Any]) -> None:
    records = [RunRecord.read(p) for p in sorted(bench["out"].rglob("run.json"))]
    assert {r.command for r in records} == {"train"}
    seen = sorted((r.params["block"], r.params["engine"], r.parallelism.requested) for r in records)
    assert seen == sorted(
        (b, e, t) for b in (1, 2) for e in ENGINES for t in (THREADS if e == "numba" else (1,))
    )
    for record in records:
        assert (record.params["filters"], record.params["batch_size"]) == (8, 32)
        assert record.params["time_budget"] == 0.05 and record.params["train_size"] == 512
        assert record.interference is not None and record.results["train_images"] > 0
        if record.params["engine"] == "numba":
            assert record.results["interleaved"]["threads"] == [1, 2]
    # The study's tables over them: one summary row per configuration over both blocks.
    summary = bench["summary"]
    assert sorted(zip(summary["engine"], summary["parallelism_requested"], strict=True)) == [
        ("numba", 1), ("numba", 2), ("numpy", 1)
    ]  # fmt: skip
    assert set(summary["blocks"]) == {BLOCKS}
    assert len(read_table(bench["csv"], "summary")) == 3
    assert (bench["out"] / "tables" / "jobs.csv").is_file()


@pytest.mark.slow  # shares a module fixture that runs the command
def test_printout_names_the_cpu_and_every_target(bench: dict[str, Any]) -> None:
    lines = bench["lines"]
    cpu = this_machine().cpu_model
    assert lines[0].startswith("cnnpar bench train on ") and cpu in lines[0]
    assert f"targets on {cpu}" in lines
    train_targets = [t for t in common.TARGETS if t.study == "train"]
    assert [c.target for c in bench["checks"]] == train_targets
    for check in bench["checks"]:
        assert check.interval is not None and check.interval.n == BLOCKS
        assert check.verdict == common.verdict(check.interval, check.target.threshold)
        (line,) = [x for x in lines if x.strip().startswith(check.target.name)]
        assert line.rstrip().endswith(check.verdict)
    for label in ("numpy 1 thread F=8 B=32", "numba 2 threads F=8 B=32"):
        assert any(x.startswith(label) for x in lines), label


# --- bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--engines", "numba,nope"], "--engines"),
        (["--engines", "torch-ddp"], "--engines"),
        (["--engines", "numba,numba"], "--engines"),
        (["--threads", "1,1"], "--threads"),
        (["--threads", "0"], "--threads"),
        (["--blocks", "0"], "--blocks"),
        (["--time-budget", "0"], "--time-budget"),
        (["--csv", "{tmp}"], "--csv"),
        (["--csv", "{tmp}/a-file/b.csv"], "--csv"),
        (["--out", "{tmp}/a-file"], "--out"),
        (["--out", "{tmp}"], "--out"),  # not empty
        (["--quick"], "--quick"),  # the old bench's options are gone
        (["--seconds", "1"], "--seconds"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    args: list[str], says: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "a-file").write_text("")
    argv = ["bench", "train", *(a.replace("{tmp}", str(tmp_path)) for a in args)]
    assert main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and says in err and "Traceback" not in err, err
    assert captured.out == "", "nothing measured"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"], "nothing written"


def test_the_default_engines_leave_out_one_that_cannot_run_here_and_say_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --engines the bench takes every CPU engine that can run here; naming one that
    cannot is refused before any work."""
    from cnnpar.bench import common
    from cnnpar.bench import train as bench_train
    from cnnpar.nets import tinycnn

    missing = "torch-compile"
    reasons = {name: None for name in bench_train.DEFAULT_ENGINES} | {missing: "no C++ compiler"}
    monkeypatch.setattr(tinycnn, "available_engines", lambda: reasons)
    planned: list[str] = []

    def run_blocks(kind, configs, blocks, run_one, directory, echo) -> None:
        planned.extend(sorted({c["engine"] for c in configs}))

    monkeypatch.setattr(common, "run_blocks", run_blocks)
    monkeypatch.setattr(common, "finish", lambda *args, **kwargs: ("summary", []))
    lines: list[str] = []
    train_bench(out=tmp_path / "out", echo=lines.append, timing_lock=None)
    assert planned == sorted(set(bench_train.DEFAULT_ENGINES) - {missing})
    assert f"leaving out {missing}: not available here (no C++ compiler)" in lines
    with pytest.raises(common.BenchError, match=f"--engines {missing}: not available here"):
        train_bench([missing], out=tmp_path / "other", echo=lines.append, timing_lock=None)
