"""The stopping rule: decisions from intervals, and, by simulation, that the intervals it
reports still cover at least 95% although the data decided when to stop."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from cnnpar.measure.intervals import Interval, log_interval
from cnnpar.measure.stopping import FIXED, MET, RAN_OUT, Precision, decide, precision_verdict

TARGET = Precision(half_width=0.05, min_blocks=3, max_blocks=12)


def test_every_look_uses_a_stricter_level_so_all_hold_together():
    assert TARGET.looks == 10
    assert TARGET.look_level == pytest.approx(0.995)
    assert Precision.fixed(6).look_level == pytest.approx(0.95)


def test_an_interval_meets_the_target_on_the_log_scale():
    assert TARGET.met(Interval(1.5, 1.5 / 1.049, 1.5 * 1.049, 4))
    assert not TARGET.met(Interval(1.5, 1.5 / 1.08, 1.5 * 1.03, 4))  # too wide below
    assert not TARGET.met(Interval(1.5, math.nan, math.nan, 1))


def test_the_rule_stops_when_every_headline_is_narrow_or_blocks_run_out():
    narrow, wide = Interval(2.0, 1.98, 2.02, 3), Interval(2.0, 1.5, 2.5, 3)
    assert decide(TARGET, 2, {"a": narrow}).stop is False  # fewer than min_blocks
    stop = decide(TARGET, 3, {"a": narrow, "b": narrow})
    assert stop.stop and stop.reason == MET
    more = decide(TARGET, 3, {"a": narrow, "b": wide})
    assert not more.stop and more.wide == ["b"]
    out = decide(TARGET, 12, {"a": narrow, "b": wide})
    assert out.stop and out.reason == RAN_OUT and out.wide == ["b"]
    fixed = decide(Precision.fixed(6), 6, {"b": wide})
    assert fixed.stop and fixed.reason == FIXED
    assert precision_verdict(TARGET, wide) == RAN_OUT and precision_verdict(TARGET, narrow) == MET


def simulate(draw, mu: float, precision: Precision, correct: bool, studies: int = 20_000) -> float:
    """The share of simulated studies whose reported interval covers the true log ratio `mu`:
    each draws per-block log ratios, looks after min_blocks and each block after, and stops as
    `decide` does. Vectorised over studies; the same t interval as `log_interval`."""
    rng = np.random.default_rng(12345)
    x = draw(rng, (studies, precision.max_blocks))
    level = precision.look_level if correct else precision.level
    stopped = np.zeros(studies, bool)
    covered = np.zeros(studies, bool)
    for n in range(precision.min_blocks, precision.max_blocks + 1):
        mean, sd = x[:, :n].mean(1), x[:, :n].std(1, ddof=1)
        half = stats.t.ppf(0.5 + level / 2, n - 1) * sd / math.sqrt(n)
        stop = ~stopped & ((half <= math.log1p(precision.half_width)) | (n == precision.max_blocks))
        covered[stop] = np.abs(mean[stop] - mu) <= half[stop]
        stopped |= stop
    return float(covered.mean())


def quiet(rng, shape):
    """Log-normal block-to-block noise of 4%."""
    return rng.normal(0.3, 0.04, shape)


def disturbed(rng, shape):
    """A quarter of the blocks slowed by 15-35% on one side of the ratio, either side alike
    (the order of a family reverses every block, so a slow stretch of the machine falls on
    each side equally often)."""
    base = rng.normal(0.3, 0.05, shape)
    hit = rng.random(shape) < 0.25
    side = np.where(rng.random(shape) < 0.5, -1.0, 1.0)
    return base + hit * side * np.abs(rng.normal(0.25, 0.1, shape))


def heavy_tailed(rng, shape):
    """Student t noise with 3 degrees of freedom: rare, large excursions."""
    return 0.3 + 0.03 * rng.standard_t(3, shape)


@pytest.mark.parametrize("draw", [quiet, disturbed, heavy_tailed])
@pytest.mark.parametrize("precision", [TARGET, Precision(0.05, 3, 6)])
def test_reported_intervals_cover_at_least_95_percent_under_the_stopping_rule(draw, precision):
    assert simulate(draw, 0.3, precision, correct=True) >= 0.95


def test_without_the_correction_stopping_on_the_data_undercovers():
    """Why the correction is needed: a plain 95% interval at the stopping block covers less."""
    assert simulate(quiet, 0.3, TARGET, correct=False) < 0.945


def test_the_simulated_interval_is_the_one_the_tables_compute():
    rng = np.random.default_rng(1)
    x = rng.normal(0.3, 0.05, 5)
    interval = log_interval(np.exp(x), level=TARGET.look_level)
    half = stats.t.ppf(0.5 + TARGET.look_level / 2, 4) * x.std(ddof=1) / math.sqrt(5)
    assert math.log(interval.high / interval.low) / 2 == pytest.approx(half)


def test_the_decision_reads_every_headline_of_real_records(tmp_path):
    """The checkpoint's decision on a synthetic result set (test_workflow_tables.fake_results:
    the machine's speed drifts from block to block, equally on both sides of each ratio, so
    every paired ratio is exact): every speedup and comparison is a headline, each meets any
    target, and the decision is written as JSON."""
    import json

    from test_workflow_tables import DRIFT, fake_results

    from cnnpar.study import stop, tables

    records = [p for p in fake_results(tmp_path / "results") if "-b" in p.parent.name]
    blocks = len(DRIFT)
    frames = tables.build_frames(records, level=TARGET.look_level)
    found = stop.headlines(frames["summary"], frames["comparisons"])
    assert any(name.startswith("speedup numba 2 threads") for name in found), found
    assert any(" / " in name for name in found), found
    assert all(TARGET.met(interval) for interval in found.values())
    made = stop.write_decision(records, Precision(0.05, 2, 12), blocks, tmp_path / "d.json")
    assert made.stop and made.reason == MET
    assert json.loads((tmp_path / "d.json").read_text()) == made.as_dict()
