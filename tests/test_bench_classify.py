"""`cnnpar bench classify` end to end on a tiny mosaic (B=1, B=256 and threads, 5 interleaved
rounds, each variant a fresh process per round): every variant has 5 samples, the speed-ups and
roofline fractions are recomputed from the per-round samples in the rounds CSV, the intervals
hold their estimates, and the targets follow their intervals. The round schedule (ABBA, probe
inside the round) and the interval wording are checked on fakes, and the one-line errors for a
bad `--only` or `--csv`."""

from __future__ import annotations

import contextlib
import csv
import io
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import stats

from cnnpar.bench.classify import (
    B1_LABEL,
    TARGET_BEST_VS_B1,
    Run,
    classify_bench,
    interleaved_rounds,
    variants,
)
from cnnpar.bench.common import BenchError, direction, interval_text, target_verdict
from cnnpar.cli import build_parser, main
from cnnpar.measure.intervals import Interval
from cnnpar.nets.mosaicnet import FLOPS_PER_IMAGE
from cnnpar.record import RunRecord

ROUNDS = 5
ONLY = (1, 2, 3)  # B=1, sequential B=256, threads N=2 B=256


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("bench") / "results" / "classify.csv"  # directory created
    argv = ["bench", "classify", "--rows", "6", "--cols", "8", "--repeats", str(ROUNDS)]
    argv += ["--warmup", "0", "--only", *map(str, ONLY), "--csv", str(out)]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(argv) == 0
    with out.open() as fh:
        rows = list(csv.DictReader(fh))
    rounds_csv = out.with_name("classify_rounds.csv")
    with rounds_csv.open() as fh:
        rounds = list(csv.DictReader(fh))
    by_variant: dict[str, list[dict[str, str]]] = defaultdict(list)
    for line in rounds:
        by_variant[line["variant"]].append(line)
    return {
        "out": out,
        "rows": rows,
        "rounds": by_variant,
        "record": RunRecord.read(out.parent / "run.json"),
        "printed": printed.getvalue(),
    }


def _t_interval(ratios: list[float]) -> tuple[float, float, float]:
    """Geometric mean and 95% Student-t interval on the logs, computed here independently."""
    logs = np.log(ratios)
    half = stats.t.ppf(0.975, len(logs) - 1) * logs.std(ddof=1) / math.sqrt(len(logs))
    return math.exp(logs.mean()), math.exp(logs.mean() - half), math.exp(logs.mean() + half)


def test_every_variant_b1_included_has_a_sample_per_round(bench_run) -> None:
    chosen = [variants(2)[i - 1] for i in ONLY]
    assert [r["variant"] for r in bench_run["rows"]] == [v.label for v in chosen]
    assert B1_LABEL in bench_run["rounds"]
    for row in bench_run["rows"]:
        samples = bench_run["rounds"][row["variant"]]
        assert [int(s["round"]) for s in samples] == list(range(1, ROUNDS + 1))
        assert int(row["repeats"]) == ROUNDS >= 5
        seconds = [float(s["seconds"]) for s in samples]
        assert all(s > 0 for s in seconds)
        # The per-variant summary is the quartiles of exactly these samples.
        q1, median, q3 = np.percentile(seconds, [25, 50, 75])
        assert float(row["median_s"]) == pytest.approx(median, rel=1e-12)
        assert float(row["q1_s"]) == pytest.approx(q1, rel=1e-12)
        assert float(row["q3_s"]) == pytest.approx(q3, rel=1e-12)


def test_rounds_are_interleaved_abba(bench_run) -> None:
    n = len(ONLY)
    for round_index in range(ROUNDS):
        order = [
            int(bench_run["rounds"][r["variant"]][round_index]["order"]) for r in bench_run["rows"]
        ]
        forward = list(range(1, n + 1))
        assert order == (forward if round_index % 2 == 0 else forward[::-1])


def test_speedups_are_paired_geometric_means_with_their_intervals(bench_run) -> None:
    rows = bench_run["rows"]
    reference = rows[0]
    assert reference["variant"] == B1_LABEL
    assert reference["speedup"] == reference["speedup_low"] == reference["speedup_over"] == ""
    ref_s = [float(s["seconds"]) for s in bench_run["rounds"][B1_LABEL]]
    for row in rows[1:]:
        own_s = [float(s["seconds"]) for s in bench_run["rounds"][row["variant"]]]
        # Same mosaic, so the rate ratio of a round is the inverse time ratio.
        estimate, low, high = _t_interval([r / o for r, o in zip(ref_s, own_s, strict=True)])
        assert float(row["speedup"]) == pytest.approx(estimate, rel=1e-9)
        assert float(row["speedup_low"]) == pytest.approx(low, rel=1e-9)
        assert float(row["speedup_high"]) == pytest.approx(high, rel=1e-9)
        assert low <= estimate <= high
        assert row["speedup_over"] == B1_LABEL
        assert f"{estimate:.2f}× [{low:.2f}, {high:.2f}]" in bench_run["printed"]

    # Every ratio in the record, recomputed from the rounds CSV, with its verdict.
    rates = {
        v: [float(s["items"]) / float(s["seconds"]) for s in samples]
        for v, samples in bench_run["rounds"].items()
    }
    ratios = bench_run["record"].results["ratios"]
    pairs = {(r["numerator"], r["denominator"]) for r in ratios}
    assert ("threads N=2 B=256", "sequential B=256") in pairs
    assert ("sequential B=256", B1_LABEL) in pairs
    for r in ratios:
        per_round = [
            a / b for a, b in zip(rates[r["numerator"]], rates[r["denominator"]], strict=True)
        ]
        estimate, low, high = _t_interval(per_round)
        assert (r["estimate"], r["low"], r["high"]) == pytest.approx((estimate, low, high))
        assert r["low"] <= r["estimate"] <= r["high"] and r["n"] == ROUNDS
        expected = "faster" if low > 1 else "slower" if high < 1 else "not resolved"
        assert r["verdict"] == expected
        line = f"{r['ratio']}: {estimate:.2f}× [{low:.2f}, {high:.2f}], {expected}"
        assert line in bench_run["printed"]


def test_roofline_is_probed_every_round_and_fractions_are_per_round(bench_run) -> None:
    probes: dict[int, list[float]] = defaultdict(list)
    for row in bench_run["rows"]:
        samples = bench_run["rounds"][row["variant"]]
        cores = int(row["parallelism_effective"])
        roofs = [float(s["roofline_gflops"]) for s in samples]
        # Each round's own probe: distinct measurements, shared by the variants of that round.
        assert len(set(roofs)) == ROUNDS
        if probes[cores]:
            assert roofs == probes[cores]
        probes[cores] = roofs
        fractions = []
        for s, roof in zip(samples, roofs, strict=True):
            fraction = FLOPS_PER_IMAGE * int(s["items"]) / float(s["seconds"]) / 1e9 / roof
            assert float(s["roofline_fraction"]) == pytest.approx(fraction, rel=1e-9)
            fractions.append(fraction)
        estimate, low, high = _t_interval(fractions)
        assert float(row["roofline_fraction"]) == pytest.approx(estimate, rel=1e-9)
        assert float(row["roofline_fraction_low"]) == pytest.approx(low, rel=1e-9)
        assert float(row["roofline_fraction_high"]) == pytest.approx(high, rel=1e-9)
        assert float(row["roofline_gflops"]) == pytest.approx(
            math.exp(np.mean(np.log(roofs))), rel=1e-9
        )
    assert set(probes) == {1, 2}, "sequential on 1 core, threads N=2 on 2"
    recorded = bench_run["record"].results["roofline_gflops"]
    assert set(recorded) == {"1", "2"} and recorded["2"]["n"] == ROUNDS


def test_rows_csv_and_record(bench_run) -> None:
    for row in bench_run["rows"]:
        assert (row["bench"], row["model"], row["grid"]) == ("classify", "mosaicnet", "6x8")
        assert int(row["items"]) == 48 and row["rate_unit"] == "cells/s"
        cells, median = int(row["items"]), float(row["median_s"])
        assert float(row["rate"]) == pytest.approx(cells / median, rel=1e-9)
        assert float(row["rate_q1"]) == pytest.approx(cells / float(row["q3_s"]), rel=1e-9)
        assert float(row["gflops"]) == pytest.approx(
            FLOPS_PER_IMAGE * cells / median / 1e9, rel=1e-9
        )
        assert int(row["pred_mismatches"]) == 0
    assert int(bench_run["rows"][2]["parallelism_effective"]) == 2, "threads N=2: 2 torch threads"

    record = bench_run["record"]
    assert record.command == "bench-classify" and record.model == "mosaicnet"
    assert record.outputs == ["classify.csv", "classify_rounds.csv"]
    assert record.results["rounds_csv"] == "classify_rounds.csv"
    assert record.params == {
        "weights": None,
        "rows": 6,
        "cols": 8,
        "workers": 2,
        "repeats": ROUNDS,
        "warmup": 0,
        "seed": 0,
        "only": list(ONLY),
    }
    assert record.results["pred_mismatched_variants"] == []
    assert record.parallelism.requested == 2 and record.parallelism.effective == 2
    (target,) = record.results["targets"]  # no processes variant: only best vs B=1
    assert target["goal"] == TARGET_BEST_VS_B1 and target["rounds"] == ROUNDS
    assert target["low"] <= target["value"] <= target["high"]
    interval = Interval(target["value"], target["low"], target["high"], ROUNDS)
    assert target["verdict"] == target_verdict(interval, TARGET_BEST_VS_B1)
    assert target["met"] == (target["low"] >= TARGET_BEST_VS_B1)

    printed = bench_run["printed"]
    assert "48 cells" in printed and "predictions: identical in every variant and round" in printed
    assert f"target >= {TARGET_BEST_VS_B1:g}×: {target['verdict']}" in printed


def test_interleaved_rounds_reverse_order_and_probe_inside_each_round() -> None:
    log: list[str] = []
    cores = {0: 1, 1: 2, 2: 1}

    def run_one(i: int) -> Run:
        log.append(f"v{i}")
        return Run(0.1 * (i + 1), 0.0, 4, 1, cores[i], "glibc", 1.0, np.zeros(4))

    def probe(wanted: set[int]) -> dict[int, float]:
        log.append(f"probe{sorted(wanted)}")
        return {n: 10.0 * n + len(log) for n in wanted}

    rounds = interleaved_rounds(3, run_one, probe, repeats=3, warmup=1, progress=lambda _: None)
    forward = ["v0", "v1", "v2", "probe[1, 2]"]
    assert log == forward + forward[::-1] + forward + forward[::-1]
    assert len(rounds.runs) == len(rounds.peaks) == 3, "the warm-up round is dropped"
    assert rounds.order == [[3, 2, 1], [1, 2, 3], [3, 2, 1]]
    assert len({p[2] for p in rounds.peaks}) == 3, "a fresh probe every round"

    # A core count first seen after an odd round's opening probe is probed at the round's end.
    log.clear()
    seen = iter([1, 1, 1, 2])

    def run_changing(i: int) -> Run:
        log.append(f"v{i}")
        return Run(0.1, 0.0, 4, 1, next(seen), "glibc", 1.0, np.zeros(4))

    interleaved_rounds(
        1,
        run_changing,
        probe,
        repeats=4,
        warmup=0,
        progress=lambda _: None,
    )
    assert log == [
        "v0",
        "probe[1]",
        "probe[1]",
        "v0",
        "v0",
        "probe[1]",
        "probe[1]",
        "v0",
        "probe[2]",
    ]


def test_interval_wording_and_target_verdicts() -> None:
    assert interval_text(Interval(1.7234, 1.614, 1.8449, 5)) == "1.72× [1.61, 1.84]"
    assert interval_text(Interval(1.5, math.nan, math.nan, 1)) == "1.50× [no interval: 1 round]"
    assert direction(Interval(1.2, 1.1, 1.3, 5)) == "faster"
    assert direction(Interval(0.8, 0.7, 0.9, 5)) == "slower"
    assert direction(Interval(1.2, 0.9, 1.5, 5)) == "not resolved", "the interval holds 1"
    assert target_verdict(Interval(4.5, 4.0, 5.0, 5), 4.0) == "met"
    assert target_verdict(Interval(4.5, 3.9, 5.0, 5), 4.0) == "not resolved"
    assert target_verdict(Interval(3.5, 3.0, 3.9, 5), 4.0) == "missed"
    assert target_verdict(Interval(9.0, math.nan, math.nan, 1), 4.0) == "not resolved"


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


def test_csv_path_is_checked_before_measuring(tmp_path: Path, capsys) -> None:
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
    assert args.repeats == 5, "the README promises at least 5 rounds"
    assert (args.rows, args.cols, args.warmup) == (100, 100, 1)
    for option in ("--rows", "--cols", "--workers", "--repeats"):
        assert main(["bench", "classify", option, "0"]) == 2
    assert main(["bench", "classify", "--warmup", "-1"]) == 2
