"""The timing harness on a fake clock (samples known exactly), thread control and `cnnpar info`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from cnnpar.measure import roofline, threads, timing
from cnnpar.measure.intervals import paired_ratio_interval


class FakeClock:
    """`time` for cnnpar.measure.timing: perf_counter moves only when the work under test says
    it took time (`take`), so every sample is known exactly whatever the machine is doing."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now

    def take(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(timing, "time", fake)
    return fake


def test_samples_are_the_timed_calls_and_warmup_is_not_counted(clock) -> None:
    # The first (warm-up) call is slow, like a JIT compile; it must not be timed.
    durations = iter([1.0, 0.5, 0.125, 0.375, 0.0625, 0.25])
    calls: list[float] = []

    def work() -> None:
        calls.append(clock.now)
        clock.take(next(durations))

    result = timing.measure(work, repeats=5, warmup=1)
    assert len(calls) == 6
    assert result.samples == [0.5, 0.125, 0.375, 0.0625, 0.25]
    assert (result.min, result.q1, result.median, result.q3) == (0.0625, 0.125, 0.25, 0.375)
    assert result.iqr == pytest.approx(result.q3 - result.q1)
    summary = result.summary()
    assert summary["repeats"] == 5 and summary["warmup"] == 1


def test_sync_hook_runs_before_every_clock_read_and_setup_is_untimed(clock) -> None:
    """fn only queues its work (like a CUDA launch) and sync waits for it: a sample holds the
    queued work only if sync runs before the clock is read; setup's second is not in it."""
    events: list[str] = []
    queued = []

    def fn() -> None:
        events.append("fn")
        queued.append(0.125)

    def sync() -> None:
        events.append("sync")
        clock.take(sum(queued))
        queued.clear()

    result = timing.measure(fn, repeats=3, warmup=1, sync=sync, setup=lambda: clock.take(1.0))
    # warm-up: fn, sync; each repeat: sync, fn, sync.
    assert events == ["fn", "sync"] + ["sync", "fn", "sync"] * 3
    assert result.samples == [0.125] * 3


def test_bad_repeats() -> None:
    with pytest.raises(ValueError, match="repeats"):
        timing.measure(lambda: None, repeats=0)


def test_a_budget_ends_the_calls_once_its_seconds_are_spent(clock) -> None:
    """Each call is told when the budget runs out and may overrun it; the calls stop once
    the timed seconds reach the budget, or at max_repeats."""
    deadlines: list[float] = []

    def work(deadline: float) -> None:
        deadlines.append(deadline)
        clock.take(0.375)

    result = timing.measure_budget(work, budget_s=1.0, max_repeats=10)
    assert result.samples == [0.375] * 3  # 1.125 s: the third call ran past the budget
    assert deadlines == [1.0, 1.0, 1.0]  # the same moment, whenever a call starts
    assert result.warmup == 0
    capped = timing.measure_budget(work, budget_s=100.0, max_repeats=2)
    assert capped.samples == [0.375] * 2
    # The first call always runs, however small the budget.
    assert timing.measure_budget(work, budget_s=1e-9, max_repeats=5).samples == [0.375]


def test_a_budget_s_calls_go_on_only_as_every_process_agrees(clock) -> None:
    """Ranks must make the same calls: `agree` gets this process's wish to stop and returns
    the common decision, here another rank's wish to stop after the first call."""
    wishes: list[bool] = []

    def agree(stop: bool) -> bool:
        wishes.append(stop)
        return True

    result = timing.measure_budget(
        lambda deadline: clock.take(0.25), budget_s=1.0, max_repeats=5, agree=agree
    )
    assert result.samples == [0.25] and wishes == [False]


@pytest.mark.parametrize("budget", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_budgets(budget: float) -> None:
    with pytest.raises(ValueError, match="budget_s"):
        timing.measure_budget(lambda deadline: None, budget_s=budget, max_repeats=1)
    with pytest.raises(ValueError, match="max_repeats"):
        timing.measure_budget(lambda deadline: None, budget_s=1.0, max_repeats=0)


def test_alternating_reverses_the_order_every_other_round() -> None:
    assert [timing.alternating("ABC", r) for r in range(3)] == [
        ["A", "B", "C"],
        ["C", "B", "A"],
        ["A", "B", "C"],
    ]
    assert timing.alternating([], 1) == []


def test_interleaved_rounds_alternate_order_and_pair_samples(clock) -> None:
    """slow takes 3x fast's time in every round while the machine's speed changes from round to
    round: the paired ratio is exactly 3."""
    events: list[str] = []
    speed = [1.0, 2.0, 1.0, 4.0]  # seconds per unit of work in each round (warm-up first)

    def case(name: str, units: float):
        def run() -> None:
            events.append(name)
            calls = sum(1 for e in events if not e.startswith("setup"))
            clock.take(units * speed[(calls - 1) // 2])

        return run

    result = timing.measure_interleaved(
        {"slow": case("slow", 0.75), "fast": case("fast", 0.25)},
        repeats=3,
        warmup=1,
        setup=lambda key: events.append(f"setup {key}"),
    )
    calls = [e for e in events if not e.startswith("setup")]
    # ABBA: the order reverses every round, so drift lands on both cases alike.
    assert calls == ["slow", "fast", "fast", "slow", "slow", "fast", "fast", "slow"]
    assert events[:2] == ["setup slow", "slow"], "setup runs before each call of its own case"
    assert result["slow"].samples == [1.5, 0.75, 3.0], "the warm-up round is not counted"
    assert result["fast"].samples == [0.5, 0.25, 1.0]
    ratio = paired_ratio_interval(result["slow"].samples, result["fast"].samples)
    assert (ratio.estimate, ratio.low, ratio.high) == pytest.approx((3.0, 3.0, 3.0))


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


@pytest.mark.slow  # seconds: spawns processes or trains
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


@pytest.mark.slow  # seconds: spawns processes or trains
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
