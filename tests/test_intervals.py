"""The interval code on simulated paired blocks with a known ratio: coverage near 95%."""

import math

import numpy as np
import pytest

from cnnpar.measure.intervals import Interval, log_interval, paired_ratio_interval, verdict


def _coverage(blocks: int, trials: int, true_ratio: float, drift: float, noise: float) -> float:
    """Share of trials whose interval holds `true_ratio`. Each block multiplies both sides by
    one machine speed (drift, shared by the pair) and each side by its own noise."""
    rng = np.random.default_rng(blocks)
    hits = 0
    for _ in range(trials):
        speed = np.exp(rng.normal(0.0, drift, blocks))  # the block's machine speed
        base = 1000.0 * speed * np.exp(rng.normal(0.0, noise, blocks))
        fast = true_ratio * 1000.0 * speed * np.exp(rng.normal(0.0, noise, blocks))
        interval = paired_ratio_interval(fast, base)
        hits += interval.low <= true_ratio <= interval.high
    return hits / trials


@pytest.mark.parametrize("blocks", [3, 5, 10])
def test_paired_interval_covers_the_true_ratio_about_95_percent(blocks):
    coverage = _coverage(blocks, trials=4000, true_ratio=1.7, drift=0.3, noise=0.05)
    # binomial sd at 4000 trials is 0.35 percentage points: 93.5-96.5% is 4 sd either side.
    assert 0.935 <= coverage <= 0.965, coverage


def test_pairing_removes_shared_drift():
    """Large block-to-block drift (±30%) is shared by the pair: the interval stays narrow."""
    rng = np.random.default_rng(1)
    speed = np.exp(rng.normal(0.0, 0.3, 5))
    base = 100.0 * speed * np.exp(rng.normal(0.0, 0.01, 5))
    fast = 150.0 * speed * np.exp(rng.normal(0.0, 0.01, 5))
    paired = paired_ratio_interval(fast, base)
    assert paired.low < 1.5 < paired.high
    assert paired.high / paired.low < 1.1
    # Unpaired, the same data cannot tell 1.5 from 1.
    unpaired_fast, unpaired_base = log_interval(fast), log_interval(base)
    assert unpaired_fast.low / unpaired_base.high < 1.0


def test_estimate_is_the_geometric_mean_of_block_ratios():
    interval = paired_ratio_interval([2.0, 8.0], [1.0, 1.0])
    assert interval.estimate == pytest.approx(4.0)
    assert interval.n == 2
    # Equal to the ratio of the geometric means of the rates: it summarises rates.
    assert interval.estimate == pytest.approx(
        log_interval([2.0, 8.0]).estimate / log_interval([1.0, 1.0]).estimate
    )


def test_one_block_has_an_estimate_but_no_interval():
    interval = log_interval([3.0])
    assert interval.estimate == pytest.approx(3.0) and interval.n == 1
    assert math.isnan(interval.low) and not interval.resolved
    assert verdict(interval) == "not resolved"


def test_invalid_values_are_dropped_and_nothing_gives_nan():
    assert log_interval([2.0, float("nan"), 0.0, -1.0, 2.0]).n == 2
    empty = log_interval([])
    assert empty.n == 0 and math.isnan(empty.estimate)
    with pytest.raises(ValueError, match="differ in length"):
        paired_ratio_interval([1.0, 2.0], [1.0])


def test_verdict_only_states_a_direction_the_interval_supports():
    assert verdict(Interval(1.5, 1.2, 1.8, 3)) == "higher"
    assert verdict(Interval(0.7, 0.6, 0.9, 3)) == "lower"
    assert verdict(Interval(1.2, 0.8, 1.6, 3)) == "not resolved"
    assert Interval(2.0, 1.0, 3.0, 3).scaled(0.5) == Interval(1.0, 0.5, 1.5, 3)


def test_unpaired_ratio_interval_is_welch_on_the_logs():
    from scipy import stats

    from cnnpar.measure.intervals import unpaired_ratio_interval

    base = [100.0, 110.0, 95.0, 105.0]
    other = [50.0, 56.0, 47.0]
    got = unpaired_ratio_interval(other, base)
    a, b = np.log(other), np.log(base)
    low, high = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert got.estimate == pytest.approx(np.exp(a.mean() - b.mean()))
    assert (got.low, got.high) == pytest.approx((np.exp(low), np.exp(high)))
    assert got.direction("faster", "slower") == "slower" and got.n == 3
    assert not unpaired_ratio_interval([1.0], base).resolved
    same = unpaired_ratio_interval([2.0, 2.0], [1.0, 1.0])
    assert (same.estimate, same.low, same.high) == (2.0, 2.0, 2.0)
