"""The timing harness on sleep-based callables, thread control and `cnnpar info`."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from cnnpar import timing


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


def test_set_threads_reports_effective_counts() -> None:
    before = timing.effective_threads()
    try:
        counts = timing.set_threads(1)
        assert counts["torch_threads"] == 1
        assert counts["numba_threads"] == 1
        assert counts["blas_threads"] in (1, None)
    finally:
        timing.set_threads(max(1, before["torch_threads"] or 1))


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
    assert record["sgemm_gflops"] > 0.5
    assert record["sgemm_threads"] == 1


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
