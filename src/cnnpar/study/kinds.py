"""The two kinds of timed job in the study, each described once: training and classification.

Tables, figures, the report and `cnnpar compare` read a kind's unit, its keys and its baseline
from here instead of branching on the study name. A *family* is a set of configurations that
share one baseline (a speedup is formed inside a family); a *configuration* is one member of a
family (its layout: the subject, its torch.distributed ranks and its parallelism); `keys` is
everything that says what was asked, which is how configurations measured in different result
sets are matched. Parallelism is always `parallelism_requested` (what the configuration asked
for, in cores: ranks × threads per rank) and `parallelism` (what the job ran with, from its run
record).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


def plain_number(value: Any) -> str:
    """A parameter value for prose: 8.0 -> '8'."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def rank_count(value: Any) -> int:
    """A job's torch.distributed rank count: 1 when missing (records from before ranks, or
    jobs that are one process)."""
    if value is None or value != value:  # None or NaN
        return 1
    return int(value)


@dataclass(frozen=True)
class StudyKind:
    """One kind of timed job: `name` is the run record's command (train, classify)."""

    name: str
    output: str  # the job's own table beside run.json (metrics.csv, result.csv)
    subject: str  # the column naming what runs: engine or mode
    unit: str  # what the parallelism counts: thread or worker
    rate_unit: str  # images/s or cells/s
    family: tuple[str, ...]  # configurations sharing one baseline
    config: tuple[str, ...]  # one configuration inside its family
    baseline_subject: str | None  # the baseline is this subject at 1 (None: the same subject)

    @property
    def keys(self) -> tuple[str, ...]:
        """Every key of what a configuration asked for (model first)."""
        out = ["model", self.subject, *self.family, *self.config]
        return tuple(dict.fromkeys(out))

    @property
    def peers(self) -> tuple[str, ...]:
        """The keys under which subjects (engines, modes) are compared with each other."""
        return tuple(k for k in self.family if k != self.subject)

    @property
    def layout(self) -> tuple[str, str]:
        """The columns naming a layout of the cores: what runs, and over how many
        torch.distributed ranks (1 for everything but torch-ddp and mode ranks)."""
        return (self.subject, "ranks")

    def parallelism_text(self, n: Any) -> str:
        """'2 threads', '1 worker'."""
        return f"{plain_number(n)} {self.unit}{'s' * (float(n) != 1)}"

    def layout_text(self, name: str, n: Any, ranks: Any = 1) -> str:
        """'numba 2 threads', or with ranks 'torch-ddp 2 ranks x 1 thread', where `n`, the
        parallelism, counts cores: ranks × threads per rank."""
        ranks = rank_count(ranks)
        if ranks > 1:
            per = int(float(n)) // ranks
            return f"{name} {ranks} ranks x {per} thread{'s' * (per != 1)}"
        return f"{name} {self.parallelism_text(n)}"

    def is_baseline(self, row: Mapping[str, Any]) -> bool:
        if self.baseline_subject is None:
            return row["parallelism_requested"] == 1
        return row[self.subject] == self.baseline_subject

    def baseline_name(self, row: Mapping[str, Any]) -> str:
        """What a speedup in this family is over, e.g. 'numba 1 thread' or 'sequential'."""
        if self.baseline_subject is None:
            return f"{row[self.subject]} {self.parallelism_text(1)}"
        return self.baseline_subject

    def family_text(self, row: Mapping[str, Any]) -> str:
        """Where a comparison holds: 'F=8, B=32', 'mosaicnet B=128' or '50x50, B=256'."""
        batch = f"B={plain_number(row['batch_size'])}"
        if self.name == "classify":
            return f"{row['grid']}, {batch}"
        if row["model"] == "tinycnn":
            return f"F={plain_number(row['filters'])}, {batch}"
        return f"{row['model']} {batch}"

    def describe(self, row: Mapping[str, Any], parallelism: str = "parallelism_requested") -> str:
        """One configuration in words: 'numba 2 threads F=8 B=32', 'processes 2 workers 50x50
        B=256' (the parallelism from column `parallelism`)."""
        what = self.layout_text(row[self.subject], row[parallelism], row.get("ranks"))
        batch = f"B={plain_number(row['batch_size'])}"
        if self.name == "classify":
            return f"{what} {row['grid']} {batch}"
        if row["model"] == "tinycnn":
            return f"{what} F={plain_number(row['filters'])} {batch}"
        return f"{what} {batch}"


KINDS: dict[str, StudyKind] = {
    k.name: k
    for k in (
        StudyKind(
            "train",
            output="metrics.csv",
            subject="engine",
            unit="thread",
            rate_unit="images/s",
            family=("model", "engine", "filters", "batch_size"),
            config=("ranks", "parallelism_requested"),
            baseline_subject=None,  # the same engine at 1 thread
        ),
        StudyKind(
            "classify",
            output="result.csv",
            subject="mode",
            unit="worker",
            rate_unit="cells/s",
            family=("model", "grid", "cells", "batch_size"),
            config=("mode", "ranks", "parallelism_requested"),
            baseline_subject="sequential",
        ),
    )
}
