"""The study's stopping decision after a paired block: the headline ratios of every record so
far, at the level the stopping rule uses (`cnnpar.measure.stopping`), and whether to stop.

The headlines are what the report states as findings: each speedup over its base (summary rows
with a speedup interval) and each engine or mode comparison (the comparisons table). The
workflow's checkpoint `block_decision` calls `write_decision` after each block from
`precision.min_blocks` on.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import pandas as pd

from cnnpar import io
from cnnpar.measure.intervals import Interval
from cnnpar.measure.stopping import Decision, Precision, decide

log = logging.getLogger(__name__)


def headlines(summary: pd.DataFrame, comparisons: pd.DataFrame) -> dict[str, Interval]:
    """Every headline ratio with its interval, by a name for people: the speedups of the
    summary (rows that have one) and the ratios of the comparisons table."""
    from cnnpar.study.kinds import KINDS

    out: dict[str, Interval] = {}
    for _, row in summary.iterrows():
        interval = Interval.from_columns(row, "speedup", row.get("blocks"))
        if not pd.notna(interval.estimate) or interval.low == interval.high:
            continue  # no speedup formed, or a base case against itself (exactly 1)
        out[f"speedup {KINDS[row['study']].describe(row)}"] = interval
    for _, row in comparisons.iterrows():
        if pd.notna(row.get("ratio")):
            name = f"{row.get('subject')} / {row.get('reference')} {row.get('family', '')}"
            out[name.strip()] = Interval.from_columns(row, "ratio", row.get("blocks"))
    return out


def decision(
    records: Sequence[str | os.PathLike[str]], precision: Precision, block: int
) -> Decision:
    """Stop or run another block, from the records of blocks 1..`block`."""
    from cnnpar.study import tables

    frames = tables.build_frames(records, level=precision.look_level)
    found = headlines(frames["summary"], frames["comparisons"])
    made = decide(precision, block, found)
    for name in made.wide:
        log.info("wider than ±%.0f%%: %s %s", 100 * precision.half_width, name, found[name].text())
    log.info("after block %d: %s (%s)", block, "stop" if made.stop else "continue", made.reason)
    return made


def write_decision(
    records: Sequence[str | os.PathLike[str]],
    precision: Precision,
    block: int,
    out: str | os.PathLike[str],
) -> Decision:
    """`decision` written to `out` as JSON (blocks, stop, reason, wide)."""
    made = decision(records, precision, block)
    io.write_json(out, made.as_dict())
    return made
