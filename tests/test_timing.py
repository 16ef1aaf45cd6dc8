"""The timing harness on sleep-based callables, thread control and `cnnpar info`."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from cnnpar.measure import roofline, threads, timing
from cnnpar.measure.intervals import paired_ratio_interval


def test_median_of_sleeps_within_tolerance_and_warmup_not_counted() -> None:
    calls: list[float] = []

    def work() -> None:
        # The first (warm-up) call is slow, like a JIT compile; it must not be timed.
        time.sleep(0.25 if not calls else 0.02)
        calls.append(time.perf_counter())

    result = timing.measure(work, repeats=5, warmup=1)
    assert len(calls) == 6
    assert len(result.samples) == 5
    assert 0.018 <= result.median < 0.06
    assert max(result.samples) < 0.2, "the slow warm-up call leaked into the samples"
    assert result.min <= result.q1 <= result.median <= result.q3
    assert result.iqr == pytest.approx(result.q3 - result.q1)
    summary = result.summary()
    assert summary["repeats"] == 5 and summary["warmup"] == 1


def test_sync_hook_runs_before_every_clock_read_and_setup_is_untimed() -> None:
    events: list[str] = []
    result = timing.measure(
        lambda: events.append("fn"),
        repeats=3,
        warmup=1,
        sync=lambda: events.append("sync"),
        setup=lambda: time.sleep(0.05),
    )
    # warm-up: fn, sync; each repeat: sync, fn, sync.
    assert events == ["fn", "sync"] + ["sync", "fn", "sync"] * 3
    assert result.median < 0.04, "setup time leaked into the samples"


def test_bad_repeats() -> None:
    with pytest.raises(ValueError, match="repeats"):
        timing.measure(lambda: None, repeats=0)


def test_interleaved_rounds_alternate_order_and_pair_samples() -> None:
    events: list[str] = []

    def case(name: str, seconds: float):
        def run() -> None:
            events.append(name)
            time.sleep(seconds)

        return run

    result = timing.measure_interleaved(
        {"slow": case("slow", 0.03), "fast": case("fast", 0.01)},
        repeats=3,
        warmup=1,
        setup=lambda key: events.append(f"setup {key}"),
    )
    calls = [e for e in events if not e.startswith("setup")]
    # ABBA: the order reverses every round, so drift lands on both cases alike.
    assert calls == ["slow", "fast", "fast", "slow", "slow", "fast", "fast", "slow"]
    assert events[:2] == ["setup slow", "slow"], "setup runs before each call of its own case"
    assert [len(m.samples) for m in result.values()] == [3, 3]
    ratio = paired_ratio_interval(result["slow"].samples, result["fast"].samples)
    assert ratio.low <= ratio.estimate <= ratio.high
    assert 2.0 < ratio.estimate < 3.6


def test_paired_ratio_is_round_by_round() -> None:
    # Round 2 ran on a machine twice as slow for both: the paired ratio does not notice.
    slow = timing.Measurement(samples=[2.0, 4.0, 2.0], warmup=0)
    fast = timing.Measurement(samples=[1.0, 2.0, 1.0], warmup=0)
    ratio = paired_ratio_interval(slow.samples, fast.samples)
    assert (ratio.estimate, ratio.low, ratio.high) == pytest.approx((2.0, 2.0, 2.0))
    with pytest.raises(ValueError, match="differ in length"):
        paired_ratio_interval(slow.samples, [1.0])
    with pytest.raises(ValueError, match="repeats"):
        timing.measure_interleaved({"a": lambda: None}, repeats=0)


def test_set_threads_reports_effective_counts() -> None:
    before = threads.effective_threads()
    try:
        counts = threads.set_threads(1, numba=True)
        assert counts["torch_threads"] == 1
        assert counts["numba_threads"] == 1
        assert counts["blas_threads"] in (1, None)
    finally:
        threads.set_threads(max(1, before["torch_threads"] or 1))


ENV_KEYS = {
    "cpu_model",
    "logical_cores",
    "ram_gib",
    "os",
    "python",
    "numpy",
    "torch",
    "numba",
    "snakemake",
    "cuda_device",
    "git_revision",
    "hostname",
    "utc_time",
}


def test_cnnpar_info_json() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "cnnpar.cli", "info", "--json", "--threads", "1"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    record = json.loads(out)
    assert record.keys() >= ENV_KEYS
    assert record["logical_cores"] >= 1
    assert record["threads"]["torch_threads"] == 1
    assert record["sgemm_threads"] == 1
    assert record["sgemm_gflops"] == max(record["sgemm_gflops_numpy"], record["sgemm_gflops_torch"])
    # Below what one core could do at 64 float32 FLOPs per cycle (two AVX-512 FMAs) at 6 GHz:
    # a wrong FLOP count or clock would land far outside (0, that].
    assert 0 < record["sgemm_gflops"] < 64 * 6.0


def test_sgemm_rate_is_two_n_cubed_over_the_best_time(monkeypatch) -> None:
    calls = iter([[0.5, 0.25, 0.4], [0.2, 0.3, 0.25]])  # numpy's samples, then torch's

    def fake_measure(fn, repeats, warmup):
        return timing.Measurement(samples=next(calls), warmup=warmup)

    monkeypatch.setattr(roofline, "measure", fake_measure)
    peak = roofline.sgemm_peak(1, n=64, repeats=3)
    assert peak["sgemm_gflops_numpy"] == pytest.approx(2 * 64**3 / 0.25 / 1e9)
    assert peak["sgemm_gflops_torch"] == pytest.approx(2 * 64**3 / 0.2 / 1e9)
    assert peak["sgemm_gflops"] == peak["sgemm_gflops_torch"]


def test_cli_version_and_help() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "cnnpar.cli", "--version"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.startswith("cnnpar ")
    bad = subprocess.run(
        [sys.executable, "-m", "cnnpar.cli", "info", "--threads", "0"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "must be >= 1" in bad.stderr
