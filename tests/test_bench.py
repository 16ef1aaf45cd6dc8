"""`cnnpar bench train` end to end on a tiny configuration: rows, paired ratios, the CSVs, run
record and targets, each number checked against its own recomputation from the row's raw fields
or the per-round samples."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest

from cnnpar.bench import train as bench
from cnnpar.bench.common import BenchError, BenchRow, check_csv_path
from cnnpar.cli import main
from cnnpar.nets.tinycnn import spec
from cnnpar.record import RunRecord


def test_train_bench_measures_every_engine_and_pairs_thread_counts(
    tmp_path, monkeypatch, capsys
) -> None:
    monkeypatch.setattr(bench, "CPU_CONFIGS", ((2, 8),))
    monkeypatch.setattr(bench, "BENCH_IMAGES", 256)
    out = tmp_path / "bench.csv"
    rows = bench.train_bench(quick=True, seconds=0.02, csv_path=str(out))

    measured = {(r.engine, r.parallelism_requested) for r in rows}
    assert measured == {("numpy", 1), ("numba", 1), ("numba", 2), ("torch", 1), ("torch", 2)}
    for row in rows:
        assert isinstance(row, BenchRow) and row.bench == "train"
        assert (row.filters, row.batch_size, row.model) == (2, 8, "tinycnn")
        assert row.rate > 0 and row.repeats == 3
        assert row.q1_s <= row.median_s <= row.q3_s
        assert row.rate_q1 <= row.rate <= row.rate_q3
        # Images/s, GFLOP/s and the roofline fraction, recomputed from the raw fields.
        steps = row.extra["steps"]
        assert row.items == steps * row.batch_size
        assert row.rate_unit == "images/s"
        assert row.rate == pytest.approx(steps * row.batch_size / row.median_s, rel=1e-12)
        assert row.rate_q1 == pytest.approx(steps * row.batch_size / row.q3_s, rel=1e-12)
        assert row.rate_q3 == pytest.approx(steps * row.batch_size / row.q1_s, rel=1e-12)
        gflops = row.rate * spec.flops_per_image(2) / 1e9
        assert row.gflops == pytest.approx(gflops, rel=1e-12)
        assert row.roofline_gflops is not None and row.roofline_gflops > 0
        assert row.roofline_fraction == pytest.approx(gflops / row.roofline_gflops, rel=1e-12)
        assert row.parallelism_effective >= 1 and row.processes == 1
        # A speedup exists only where there is a 1-thread run of the same engine to pair with.
        if row.parallelism_requested == 1:
            assert row.speedup is None and row.speedup_over is None
        else:
            assert row.speedup_low <= row.speedup <= row.speedup_high
            assert row.speedup > 0
            assert row.speedup_over == f"{row.engine} 1 thread"
            # The geometric mean of the per-round speed-ups over the same engine's 1 thread.
            one = next(r for r in rows if (r.engine, r.parallelism_requested) == (row.engine, 1))
            per_round = np.array(one.samples_s) / np.array(row.samples_s)
            assert row.speedup == pytest.approx(math.exp(np.log(per_round).mean()), rel=1e-9)

    with out.open() as f:
        written = list(csv.DictReader(f))
    assert len(written) == len(rows)
    assert {"speedup", "roofline_fraction", "rate", "rate_unit", "steps", "iqr_s"} <= set(
        written[0]
    )
    for line, row in zip(written, rows, strict=True):
        assert line["variant"] == row.variant and line["rate_unit"] == "images/s"
        assert float(line["rate"]) == pytest.approx(
            int(line["steps"]) * int(line["batch_size"]) / float(line["median_s"]), rel=1e-9
        )
        assert float(line["iqr_s"]) == pytest.approx(
            float(line["q3_s"]) - float(line["q1_s"]), abs=1e-12
        )

    with (tmp_path / "bench_rounds.csv").open() as f:
        rounds = list(csv.DictReader(f))
    assert len(rounds) == 3 * len(rows), "one row per case and round"
    for line in rounds:
        row = next(r for r in rows if r.variant == line["variant"])
        assert float(line["seconds"]) == row.samples_s[int(line["round"]) - 1]

    record = RunRecord.read(tmp_path / "run.json")
    assert record.command == "bench-train" and record.model == "tinycnn"
    assert record.outputs == ["bench.csv", "bench_rounds.csv"]
    assert record.params == {"quick": True, "cuda": False, "repeats": 5, "seconds": 0.02}
    assert record.results["rows"] == len(rows)
    best = max(rows, key=lambda r: r.rate)
    assert record.results["best_variant"] == best.variant
    assert record.results["best_rate"] == pytest.approx(best.rate)
    assert record.parallelism.requested == 2
    copies = record.results["copies_scaling"]
    assert 0 < copies["low"] <= copies["estimate"] <= copies["high"] and copies["n"] == 3
    targets = record.results["targets"]
    texts = [t["target"] for t in targets]
    assert len(texts) == 3, texts
    assert any("x torch at F=2 B=8 2 threads" in text for text in texts)
    assert any("x 1 thread at F=2 B=8" in text for text in texts)
    assert any("of the sgemm roofline" in text for text in texts)
    for t in targets:
        assert t["low"] <= t["value"] <= t["high"]
        assert t["met"] == (t["low"] >= t["goal"])
        expected = "met" if t["met"] else "missed" if t["high"] < t["goal"] else "not resolved"
        assert t["verdict"] == expected

    printed = capsys.readouterr().out
    assert "glibc malloc" in printed or "LD_PRELOAD=" in printed, "the allocator is stated"
    assert "two independent 1-thread numba trainings at once (processes, F=2 B=8)" in printed
    assert "2 threads / 1 thread: numba " in printed
    # The summary follows the measured configuration, not a fixed one.
    assert "F=2   B=8    threads=2  numba/torch" in printed
    assert "at F=2 B=8 2 threads" in printed and "F=8 B=32" not in printed
    numba2 = next(r for r in rows if (r.engine, r.parallelism_requested) == ("numba", 2))
    torch2 = next(r for r in rows if (r.engine, r.parallelism_requested) == ("torch", 2))
    # numba over torch, paired: the same round's rates (their step counts may differ).
    per_round = [
        (numba2.items / a) / (torch2.items / b)
        for a, b in zip(numba2.samples_s, torch2.samples_s, strict=True)
    ]
    target = next(t for t in targets if "torch" in t["target"])
    assert math.isclose(target["value"], math.exp(np.mean(np.log(per_round))))
    assert f"{target['value']:.2f}× [{target['low']:.2f}, {target['high']:.2f}] -> " in printed


def test_copies_scaling_is_a_positive_ratio() -> None:
    copies = bench.copies_scaling(2, 8, repeats=3, seconds=0.02)
    assert copies.n == 3 and 0 < copies.low <= copies.estimate <= copies.high
    assert copies.estimate < 4


def test_csv_path_is_checked_before_measuring(tmp_path, capsys) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main(["bench", "train", "--quick", "--csv", str(blocker / "sub" / "b.csv")]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and "--csv" in err and "Traceback" not in err
    assert captured.out == "", "nothing measured"

    assert main(["bench", "train", "--quick", "--csv", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--csv" in err and "is a directory" in err

    # A missing directory is fine: it is made when the rows are written, so a bench that fails
    # before that leaves nothing behind.
    assert check_csv_path(tmp_path / "new" / "b.csv") == tmp_path / "new" / "b.csv"
    assert not (tmp_path / "new").exists()
    with pytest.raises(BenchError, match="--csv"):
        check_csv_path(blocker / "b.csv")


def test_bench_train_counts_must_be_positive(capsys) -> None:
    for option in ("--repeats", "--seconds"):
        assert main(["bench", "train", option, "0"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and option in err
