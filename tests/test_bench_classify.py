"""`cnnpar bench classify` end to end on a tiny mosaic (two variants, each a fresh process):
the CSV rows, their rates recomputed from their own fields, the run record, and the one-line
errors for a bad `--only` or `--csv`."""

from __future__ import annotations

import csv

import pytest

from cnnpar.bench.classify import classify_bench, variants
from cnnpar.bench.common import BenchError
from cnnpar.cli import build_parser, main
from cnnpar.nets.mosaicnet import FLOPS_PER_IMAGE
from cnnpar.record import RunRecord


def test_bench_classify_tiny_mosaic_rows_csv_and_record(tmp_path, capsys) -> None:
    out = tmp_path / "results" / "classify.csv"  # a missing directory is created
    argv = ["bench", "classify", "--rows", "6", "--cols", "8", "--repeats", "2"]
    assert main([*argv, "--only", "2", "3", "--csv", str(out)]) == 0
    printed = capsys.readouterr().out

    with out.open() as fh:
        rows = list(csv.DictReader(fh))
    chosen = [variants(2)[1], variants(2)[2]]
    assert [r["variant"] for r in rows] == [v.label for v in chosen]
    assert {
        "bench",
        "variant",
        "engine",
        "model",
        "grid",
        "batch_size",
        "parallelism_requested",
        "parallelism_effective",
        "processes",
        "repeats",
        "median_s",
        "q1_s",
        "q3_s",
        "iqr_s",
        "items",
        "rate",
        "rate_q1",
        "rate_q3",
        "rate_unit",
        "gflops",
        "roofline_gflops",
        "roofline_fraction",
        "speedup",
        "speedup_over",
        "backend",
        "malloc",
        "startup_s",
        "accuracy",
        "pred_mismatches",
    } <= set(rows[0])
    for row, v in zip(rows, chosen, strict=True):
        assert (row["bench"], row["model"], row["grid"]) == ("classify", "mosaicnet", "6x8")
        assert (row["engine"], int(row["batch_size"]), row["backend"]) == (
            v.mode,
            v.batch_size,
            v.backend,
        )
        assert int(row["parallelism_requested"]) == v.workers
        assert int(row["items"]) == 48 and int(row["repeats"]) == 2
        cells, median = int(row["items"]), float(row["median_s"])
        q1, q3 = float(row["q1_s"]), float(row["q3_s"])
        assert q1 <= median <= q3
        assert row["rate_unit"] == "cells/s"
        assert float(row["rate"]) == pytest.approx(cells / median, rel=1e-9)
        assert float(row["rate_q1"]) == pytest.approx(cells / q3, rel=1e-9)
        assert float(row["rate_q3"]) == pytest.approx(cells / q1, rel=1e-9)
        gflops = FLOPS_PER_IMAGE * cells / median / 1e9
        assert float(row["gflops"]) == pytest.approx(gflops, rel=1e-9)
        assert float(row["roofline_fraction"]) == pytest.approx(
            gflops / float(row["roofline_gflops"]), rel=1e-9
        )
        assert int(row["pred_mismatches"]) == 0
    sequential, threads = rows
    assert sequential["speedup"] == "" and sequential["speedup_over"] == ""
    assert threads["speedup_over"] == chosen[0].label
    assert float(threads["speedup"]) == pytest.approx(
        float(threads["rate"]) / float(sequential["rate"]), rel=1e-9
    )
    assert int(threads["parallelism_effective"]) == 2, "threads N=2: one process, 2 torch threads"

    record = RunRecord.read(out.parent / "run.json")
    assert record.command == "bench-classify" and record.model == "mosaicnet"
    assert record.outputs == ["classify.csv"]
    assert record.params == {
        "weights": None,
        "rows": 6,
        "cols": 8,
        "workers": 2,
        "repeats": 2,
        "seed": 0,
        "only": [2, 3],
    }
    assert record.results["rows"] == 2 and record.results["rate_unit"] == "cells/s"
    assert record.results["pred_mismatched_variants"] == []
    best = max(rows, key=lambda r: float(r["rate"]))
    assert record.results["best_variant"] == best["variant"]
    assert record.parallelism.requested == 2 and record.parallelism.effective == 2

    assert "48 cells" in printed and "predictions: identical in every variant" in printed
    assert f"x 1st: cells/s over {chosen[0].label}" in printed
    assert f"threads N=2 B=256 / sequential B=256: {float(threads['speedup']):.2f}x" in printed


@pytest.mark.parametrize("only", [["0"], ["13"], ["2", "99"]])
def test_only_out_of_range_is_one_line_naming_the_range(only, capsys) -> None:
    assert main(["bench", "classify", "--rows", "2", "--cols", "2", "--only", *only]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and "--only" in err and "Traceback" not in err
    if only != ["0"]:  # 0 is refused by the parser as not positive
        assert "from 1 to 12" in err and only[-1] in err
    assert captured.out == "", "nothing measured"
    with pytest.raises(BenchError, match="from 1 to 12"):
        classify_bench(None, rows=2, cols=2, only=[13])


def test_csv_path_is_checked_before_measuring(tmp_path, capsys) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    for bad in (blocker / "x.csv", tmp_path):
        assert main(["bench", "classify", "--rows", "2", "--cols", "2", "--csv", str(bad)]) == 2
        captured = capsys.readouterr()
        err = captured.err.strip()
        assert len(err.splitlines()) == 1 and "--csv" in err and "Traceback" not in err
        assert captured.out == "", "nothing measured"


def test_bench_classify_defaults_and_counts() -> None:
    args = build_parser().parse_args(["bench", "classify"])
    assert args.repeats == 5, "the README promises at least 5 repeats"
    for option in ("--rows", "--cols", "--workers", "--repeats"):
        assert main(["bench", "classify", option, "0"]) == 2
