"""Precision as the stopping rule: add paired blocks until every headline ratio is known to a
target width, with intervals that stay valid although the data decided when to stop.

A study runs `min_blocks` paired blocks, then looks at its headline ratios (each speedup over
its base, each engine or mode comparison) after every block and stops once every one has an
interval no wider than the target, or at `max_blocks`. Looking at the data after each block and
stopping when the intervals happen to be narrow biases a naive interval: the rule stops more
often after blocks that underestimate the spread, so a plain 95% t interval at the stopping
block covers less than 95%.

The correction is the repeated confidence interval (Jennison & Turnbull, "Interim analyses: the
repeated confidence interval approach", JRSS B 51, 1989) with a Bonferroni split of the error
over the looks: with K possible looks (`max_blocks - min_blocks + 1`), every look uses level
1 - (1 - 0.95) / K. The K intervals then hold simultaneously with probability at least 95%, so
the one reported at whatever look the rule stopped at covers at least 95%, however the stopping
depended on the data. It is conservative (wider than needed), never optimistic.
`tests/test_stopping.py` checks the coverage by simulation, for quiet and for disturbed blocks.

The width is measured on the log scale, where the intervals are symmetric: a target half-width
h is met when log(high / low) / 2 <= log(1 + h), i.e. [low, high] lies within a factor 1 + h of
the estimate on either side.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from cnnpar.measure.intervals import LEVEL, Interval

MET = "met"
RAN_OUT = "ran out of blocks"
FIXED = "fixed number of blocks"


@dataclass(frozen=True)
class Precision:
    """The config's precision target: relative half-width of every headline interval, and the
    fewest and most paired blocks a study runs."""

    half_width: float
    min_blocks: int
    max_blocks: int
    level: float = LEVEL

    def __post_init__(self) -> None:
        if not self.half_width > 0:
            raise ValueError(f"half_width must be > 0, got {self.half_width}")
        if not 1 <= self.min_blocks <= self.max_blocks:
            raise ValueError(
                f"need 1 <= min_blocks <= max_blocks, got {self.min_blocks}, {self.max_blocks}"
            )

    @classmethod
    def fixed(cls, blocks: int) -> Precision:
        """A study of exactly `blocks` blocks: one look, the plain level."""
        return cls(half_width=math.inf, min_blocks=blocks, max_blocks=blocks)

    @property
    def looks(self) -> int:
        """How many times the rule may look: after min_blocks, and after each block added."""
        return self.max_blocks - self.min_blocks + 1

    @property
    def look_level(self) -> float:
        """The confidence level of every interval, so that all looks hold together at `level`."""
        return 1 - (1 - self.level) / self.looks

    def met(self, interval: Interval) -> bool:
        """Whether `interval` is no wider than the target (on the log scale)."""
        if not interval.resolved or interval.low <= 0:
            return False
        return math.log(interval.high / interval.low) / 2 <= math.log1p(self.half_width)


@dataclass(frozen=True)
class Decision:
    """What the rule decided after `blocks` blocks: stop or add one, and why."""

    blocks: int
    stop: bool
    reason: str  # MET, RAN_OUT, FIXED, or what is still too wide
    wide: list[str] = field(default_factory=list)  # the headlines not yet at the target

    def as_dict(self) -> dict[str, object]:
        return {"blocks": self.blocks, "stop": self.stop, "reason": self.reason,
                "wide": list(self.wide)}  # fmt: skip


def decide(precision: Precision, blocks: int, headlines: Mapping[str, Interval]) -> Decision:
    """Stop after `blocks` blocks when every headline interval (computed at
    `precision.look_level`) meets the target, or when no block may be added."""
    if precision.min_blocks == precision.max_blocks:
        return Decision(blocks, stop=blocks >= precision.max_blocks, reason=FIXED)
    wide = sorted(name for name, interval in headlines.items() if not precision.met(interval))
    if blocks >= precision.min_blocks and not wide:
        return Decision(blocks, stop=True, reason=MET)
    if blocks >= precision.max_blocks:
        return Decision(blocks, stop=True, reason=RAN_OUT, wide=wide)
    reason = f"{len(wide)} headline(s) wider than ±{precision.half_width:.0%}" if wide else ""
    return Decision(blocks, stop=False, reason=reason or "fewer than min_blocks", wide=wide)


def precision_verdict(precision: Precision, interval: Interval) -> str:
    """One headline's outcome for the report: the target met, or not (ran out of blocks)."""
    if precision.min_blocks == precision.max_blocks:
        return FIXED
    return MET if precision.met(interval) else RAN_OUT
