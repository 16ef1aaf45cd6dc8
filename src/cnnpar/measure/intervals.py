"""Confidence intervals for rates and for ratios paired in time.

A study runs every configuration once per *block*, and the jobs of a block run back to back, so
a ratio (a speedup, one engine against another, a fraction of the roofline) is formed inside a
block, where both sides saw the same machine, and then summarised over blocks.

The summary is the geometric mean of the per-block ratios (equal to the ratio of the geometric
means of the paired rates, so it summarises rates, not ratios of ratios) and its interval is
Student's t interval on the mean of the log ratios: exact when block-to-block noise is
log-normal, and usable at the 3-5 blocks a study can afford. The two distribution-free choices
are not: the percentile bootstrap of 3 values covers about 70% instead of 95%, and the
widest order-statistic interval of the median of n values, [min, max], has confidence
1 - 2^(1-n), 75% at n = 3. `tests/test_intervals.py` checks the coverage by simulation.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

LEVEL = 0.95
METHOD = "geometric mean over blocks, Student t 95% interval on the log ratios"


@dataclass(frozen=True)
class Interval:
    """An estimate with its confidence interval; `low`/`high` are NaN with fewer than 2 blocks."""

    estimate: float
    low: float
    high: float
    n: int

    @property
    def resolved(self) -> bool:
        """Whether the interval is known (at least 2 finite blocks)."""
        return self.n >= 2 and math.isfinite(self.low) and math.isfinite(self.high)

    def excludes(self, value: float) -> bool:
        """Whether the whole interval lies on one side of `value` (e.g. a speedup of 1)."""
        return self.resolved and (self.low > value or self.high < value)

    def scaled(self, factor: float) -> Interval:
        """This interval times a positive constant (efficiency = speedup / parallelism)."""
        return Interval(self.estimate * factor, self.low * factor, self.high * factor, self.n)

    def direction(self, above: str = "higher", below: str = "lower", null: float = 1.0) -> str:
        """`above` or `below` when the whole interval lies on that side of `null` (a ratio of
        1 by default), else 'not resolved' (it holds `null`, or there is no interval)."""
        if not self.excludes(null):
            return "not resolved"
        return above if self.low > null else below

    def columns(self, name: str, missing: Any = math.nan) -> dict[str, Any]:
        """The table columns `name`, `name`_low, `name`_high; a non-finite value becomes
        `missing` (NaN for pandas tables, None for JSON and bench CSVs)."""
        values = (self.estimate, self.low, self.high)
        keys = (name, f"{name}_low", f"{name}_high")
        return {k: v if math.isfinite(v) else missing for k, v in zip(keys, values, strict=True)}

    @classmethod
    def from_columns(cls, row: Mapping[str, Any], name: str, n: int | None = None) -> Interval:
        """The interval written by `columns(name)` into a table row; `n` (blocks or rounds)
        defaults to 2 when the row holds an interval, else 1."""

        def number(key: str) -> float:
            value = row.get(key)
            try:
                return float(value) if value is not None else math.nan
            except (TypeError, ValueError):
                return math.nan

        low, high = number(f"{name}_low"), number(f"{name}_high")
        if n is None or not math.isfinite(float(n)):
            n = 2 if math.isfinite(low) and math.isfinite(high) else 1
        return cls(number(name), low, high, int(n))

    def text(
        self, fmt: str = "{:.2f}", unit: str = "×", scale: float = 1.0, count: str | None = None
    ) -> str:
        """`1.72× [1.61, 1.84]` (values times `scale`). Without an interval: the bare estimate,
        or with `count` (e.g. 'round') the estimate and '[no interval: 1 round]'."""
        text = fmt.format(scale * self.estimate) + unit
        if self.resolved:
            return f"{text} [{fmt.format(scale * self.low)}, {fmt.format(scale * self.high)}]"
        if count is None:
            return text
        return f"{text} [no interval: {self.n} {count}{'s' * (self.n != 1)}]"

    def as_dict(self) -> dict[str, Any]:
        """For JSON: estimate, low, high (null where not finite) and n."""
        values = self.columns("v", missing=None)
        return {"estimate": values["v"], "low": values["v_low"], "high": values["v_high"],
                "n": self.n}  # fmt: skip


def _t_quantile(df: int, level: float) -> float:
    from scipy import stats

    return float(stats.t.ppf(0.5 + level / 2, df))


def log_interval(values: Iterable[float], level: float = LEVEL) -> Interval:
    """Geometric mean of positive `values` with a t interval on their logarithms.

    Used for per-block ratios (paired) and for per-block rates alike; non-positive or
    non-finite values are dropped, as a rate or ratio cannot be one.
    """
    x = np.asarray([v for v in values if v is not None], dtype=np.float64)
    x = x[np.isfinite(x) & (x > 0)]
    n = len(x)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    logs = np.log(x)
    centre = float(logs.mean())
    if n < 2:
        return Interval(math.exp(centre), math.nan, math.nan, n)
    half = _t_quantile(n - 1, level) * float(logs.std(ddof=1)) / math.sqrt(n)
    return Interval(math.exp(centre), math.exp(centre - half), math.exp(centre + half), n)


def paired_ratio_interval(
    numerators: Iterable[float], denominators: Iterable[float], level: float = LEVEL
) -> Interval:
    """The ratio of two paired series (same blocks, same order) with its interval."""
    a = np.asarray(list(numerators), dtype=np.float64)
    b = np.asarray(list(denominators), dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired series differ in length ({len(a)} vs {len(b)})")
    with np.errstate(divide="ignore", invalid="ignore"):
        return log_interval(a / b, level)


def verdict(interval: Interval, null: float = 1.0) -> str:
    """'higher', 'lower' or 'not resolved' for an interval against `null` (the tables' words)."""
    return interval.direction(null=null)


UNPAIRED_METHOD = (
    "ratio of geometric means over blocks, 95% interval from Welch's t on the log rates "
    "(unpaired: the two sides were measured at different moments)"
)


def unpaired_ratio_interval(
    numerators: Iterable[float], denominators: Iterable[float], level: float = LEVEL
) -> Interval:
    """The ratio of two unpaired samples of rates (say, two result sets measured on different
    days): exp of the difference of their mean logs, with Welch's t interval on that difference
    (`scipy.stats.ttest_ind(equal_var=False)`), which needs no equal variances and no pairing.

    Non-positive or non-finite values are dropped. `n` is the smaller side's count; with fewer
    than 2 values on either side the interval is NaN (not resolved).
    """
    from scipy import stats

    def logs(values: Iterable[float]) -> np.ndarray:
        x = np.asarray([v for v in values if v is not None], dtype=np.float64)
        return np.log(x[np.isfinite(x) & (x > 0)])

    a, b = logs(numerators), logs(denominators)
    n = min(len(a), len(b))
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    centre = float(a.mean() - b.mean())
    if n < 2:
        return Interval(math.exp(centre), math.nan, math.nan, n)
    if np.ptp(a) == 0 and np.ptp(b) == 0:  # no spread at all: the ratio is exact
        return Interval(math.exp(centre), math.exp(centre), math.exp(centre), n)
    low, high = stats.ttest_ind(a, b, equal_var=False).confidence_interval(level)
    return Interval(math.exp(centre), math.exp(float(low)), math.exp(float(high)), n)
