"""The kinds of timed job in the study, each one object: training and classification.

A kind owns everything the tables, figures, report and `cnnpar compare` need to know about its
jobs, so none of them branches on a kind's name: which output a job writes and how its rows
become the job's *rate* (the rate statistic), the keys of its configurations and families, its
baseline, its words (a configuration, a family, a workload) and its findings. Adding a kind is
one more `StudyKind` subclass in `KINDS`, plus whatever figures of its own it wants.

A *family* is a set of configurations that share one baseline (a speedup is formed inside a
family); a *configuration* is one member of a family (its layout: the subject, its
torch.distributed ranks and its parallelism); `keys` is everything that says what was asked,
which is how configurations measured in different result sets are matched. Parallelism is
always `parallelism_requested` (what the configuration asked for, in cores: ranks × threads per
rank) and `parallelism` (what the job ran with, from its run record). Frames passed in are
pandas frames; this module needs only numpy, so the registry and the CLI can import it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from cnnpar.measure.intervals import Interval, log_interval, paired_ratio_interval


def plain_number(value: Any) -> str:
    """A parameter value for prose: 8.0 -> '8'."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def rank_count(value: Any) -> int:
    """A job's torch.distributed rank count: 1 when missing (records from before ranks, or
    jobs that are one process)."""
    return 1 if missing(value) else int(value)


def missing(value: Any) -> bool:
    """None, NaN or pandas' NA: a missing table cell."""
    try:
        return value is None or bool(value != value)
    except TypeError:  # pandas.NA has no truth value
        return True


def has(frame: Any, column: str) -> bool:
    """Whether a frame holds `column` with at least one value."""
    return column in frame.columns and bool(frame[column].notna().any())


# --- findings -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    """One statement of the report. `text` is the sentence. A finding with a `comparison` (what
    over what, and where) is also a row of the findings table: `ratio` with its 95% interval
    (None when it was not formed), `verdict` (faster, slower, not resolved, not formed),
    `blocks` (pairing units), `flagged_blocks` (those with interference) and `detail` (the
    context: efficiency, the baseline's rate, start-up). One without is a note."""

    text: str
    comparison: str = ""
    ratio: Interval | None = None
    verdict: str = ""
    blocks: int = 0
    flagged_blocks: int = 0
    detail: str = ""
    precision: str = ""  # the stopping rule's verdict on its interval (met, ran out of blocks)


def text_or_empty(value: Any) -> str:
    """A table cell as text: '' for a missing one (None, NaN)."""
    return "" if missing(value) else str(value)


def flagged_blocks(row: Mapping[str, Any]) -> int:
    """A table row's pairing units with interference (`flagged_blocks`; 0 when missing)."""
    n = row.get("flagged_blocks")
    return 0 if missing(n) else int(n)


def flag_note(row: Mapping[str, Any]) -> str:
    """The sentence ending that marks a finding resting on blocks with interference."""
    n = flagged_blocks(row)
    return f" ⚠ rests on {n} block(s) with interference (see the banner)." if n > 0 else ""


def figure_text(value: float) -> str:
    """A rate for prose, three significant figures below 100: 1.5, 16.6, 234, 1,027."""
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def roof_text(row: Mapping[str, Any]) -> str:
    """The roof that binds a summary row: 'compute roof', 'L2 bandwidth roof (234 GB/s)' or
    'memory bandwidth roof (16.6 GB/s)'."""
    if row["binding_roof"] == "compute":
        return "compute roof"
    level = "L2" if row["bandwidth_applies"] == "cache" else "memory"
    return f"{level} bandwidth roof ({figure_text(row['bandwidth_gbs'])} GB/s)"


# --- the kinds ------------------------------------------------------------------------------


@dataclass(frozen=True)
class StudyKind:
    """One kind of timed job: `name` is the run record's command (train, classify) and the
    `study` column of every table."""

    name: str
    noun: str  # for people: training, classification
    output: str  # the job's own table beside run.json (metrics.csv, result.csv)
    subject: str  # the column naming what runs: engine or mode
    unit: str  # what the parallelism counts: thread or worker
    rate_unit: str  # images/s or cells/s
    family: tuple[str, ...]  # configurations sharing one baseline
    config: tuple[str, ...]  # one configuration inside its family
    baseline_subject: str | None  # the baseline is this subject at 1 (None: the same subject)
    order: tuple[str, ...]  # how the summary orders this kind's configurations
    legend_keys: tuple[str, ...]  # family keys besides the subject that a figure's legend names
    schema: tuple[tuple[str, ...], tuple[str, ...]]  # the tidy table: columns, numeric ones
    shown: tuple[str, ...]  # the tidy table's columns the report shows
    row_text: str  # what one tidy row is: 'job × epoch'
    roofline_title: str  # its panel of the roofline figure

    # --- keys and layouts

    @property
    def keys(self) -> tuple[str, ...]:
        """Every key of what a configuration asked for (model first)."""
        out = ["model", self.subject, *self.family, *self.config]
        return tuple(dict.fromkeys(out))

    @property
    def peers(self) -> tuple[str, ...]:
        """The keys under which subjects (engines, modes) are compared with each other: one
        workload."""
        return tuple(k for k in self.family if k != self.subject)

    @property
    def layout(self) -> tuple[str, str]:
        """The columns naming a layout of the cores: what runs, and over how many
        torch.distributed ranks (1 for everything but torch-ddp and mode ranks)."""
        return (self.subject, "ranks")

    def rows(self, frame: Any) -> Any:
        """The rows of a table (one with a `study` column) that are jobs of this kind."""
        if "study" not in frame.columns:
            return frame.iloc[0:0]
        return frame[frame["study"] == self.name]

    def is_baseline(self, row: Mapping[str, Any]) -> bool:
        if self.baseline_subject is None:
            return row["parallelism_requested"] == 1
        return row[self.subject] == self.baseline_subject

    # --- words

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

    def baseline_name(self, row: Mapping[str, Any]) -> str:
        """What a speedup in this family is over, e.g. 'numba 1 thread' or 'sequential'."""
        if self.baseline_subject is None:
            return f"{row[self.subject]} {self.parallelism_text(1)}"
        return self.baseline_subject

    def setting(self, row: Mapping[str, Any]) -> list[str]:
        """What the family fixes besides model and subject, in words: ['F=8', 'B=32']."""
        raise NotImplementedError

    def family_text(self, row: Mapping[str, Any]) -> str:
        """Where a comparison holds: 'F=8, B=32', 'mosaicnet B=128' or '50x50, B=256'."""
        return ", ".join(self.setting(row))

    def describe(self, row: Mapping[str, Any], parallelism: str = "parallelism_requested") -> str:
        """One configuration in words: 'numba 2 threads F=8 B=32', 'processes 2 workers 50x50
        B=256' (the parallelism from column `parallelism`)."""
        what = self.layout_text(row[self.subject], row[parallelism], row.get("ranks"))
        return " ".join([what, *self.setting(row)])

    def workload_text(self, row: Mapping[str, Any]) -> str:
        """One workload, what a family computes whatever its subject: 'training F=8, B=32',
        'classification 50x50, B=256'."""
        return f"{self.noun} {self.family_text(row)}"

    # --- from a job's rows to its rate

    def tidy(self, frame: Any) -> Any:
        """One job's own table (`output`, with its record's columns) as its tidy-table rows."""
        return frame

    def rate(self, group: Any) -> float:
        """The rate statistic: one job's tidy rows as its rate in `rate_unit`."""
        raise NotImplementedError

    def job_columns(self, group: Any) -> dict[str, Any]:
        """The jobs-table columns of one job (its tidy rows) that are this kind's own,
        `rate_unit` and `rate` among them."""
        raise NotImplementedError

    def summary_columns(
        self, units: Any, base: Any | None, common: Any, own: Any, first: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Summary columns that are this kind's own, for one configuration: `units` its jobs by
        pairing unit, `base` its baseline's (None without one), `common` the units both have,
        `own` this kind's tidy table (full-length runs), `first` one of its jobs."""
        return {}

    def findings(self, summary: Any) -> list[Finding]:
        """What this kind's summary rows (one machine) say, speedups first."""
        return []

    def speedup_finding(self, row: Mapping[str, Any], who: str) -> Finding:
        """A summary row's speedup over its baseline as a finding; `who` names the row in the
        sentence."""
        speedup = Interval.from_columns(row, "speedup")
        ratio = speedup.text()
        efficiency = Interval.from_columns(row, "efficiency").text("{:.0f}", "%", scale=100.0)
        over = self.baseline_name(row)
        base = f"{over} at {row['baseline_rate']:,.0f} {row['rate_unit']}"
        direction = speedup.direction("faster than", "slower than")
        if direction == "not resolved":
            text = (
                f"{who}: not resolved on this machine against {base}: {ratio}, an interval that "
                f"admits both a gain and a loss (efficiency {efficiency}).{flag_note(row)}"
            )
        else:
            text = (
                f"{who}: {ratio} {direction} {base} (efficiency {efficiency}, "
                f"{int(row['blocks'])} paired blocks).{flag_note(row)}"
            )
        return Finding(
            text,
            comparison=f"{self.comparison_text(row, 'parallelism')} over {over}",
            ratio=speedup,
            verdict=speedup.direction("faster", "slower"),
            blocks=int(row["blocks"]),
            flagged_blocks=flagged_blocks(row),
            detail=f"efficiency {efficiency}; {base}",
            precision=text_or_empty(row.get("precision")),
        )

    def comparison_text(self, row: Mapping[str, Any], parallelism: str) -> str:
        """A configuration as the findings table names it, its workload first: 'training
        F=8, B=32: numba 2 threads' (the parallelism from column `parallelism`)."""
        what = self.layout_text(row[self.subject], row[parallelism], row.get("ranks"))
        return f"{self.workload_text(row)}: {what}"

    def roof_findings(self, summary: Any) -> list[Finding]:
        """Per workload, which roof binds each configuration (compute, or the L2 or memory
        bandwidth roof: `tables.roof_columns`) and the fraction of that attainable rate it
        reached, with its 95% interval over blocks; ⚠ marks one resting on interference."""
        if summary.empty or not has(summary, "attainable_fraction"):
            return []
        rows = summary[summary["attainable_fraction"].notna()]
        out = []
        for _, fam in rows.groupby(list(self.peers), dropna=False, sort=True):
            parts = []
            for _, row in fam.sort_values([self.subject, "parallelism_requested"]).iterrows():
                what = self.layout_text(row[self.subject], row["parallelism"], row.get("ranks"))
                share = Interval.from_columns(row, "attainable_fraction")
                digits = "{:.1f}" if share.estimate < 0.1 else "{:.0f}"  # 0.4%, not 0%
                parts.append(
                    f"for {what} the {roof_text(row)} binds at "
                    f"{figure_text(row['attainable_gflops'])} GFLOP/s, of which it reached "
                    f"{share.text(digits, '%', scale=100.0)}"
                    + (" ⚠" if flagged_blocks(row) else "")
                )
            first = fam.iloc[0]
            intensity = f"{first['arithmetic_intensity']:.2f} FLOP/byte"
            text = f"Roofline of {self.workload_text(first)} ({intensity}): {'; '.join(parts)}."
            out.append(Finding(text))
        return out


@dataclass(frozen=True)
class TrainKind(StudyKind):
    """Training: a job trains for a time budget; its rate is every timed epoch's images over
    their seconds (a time-weighted mean)."""

    def setting(self, row: Mapping[str, Any]) -> list[str]:
        batch = f"B={plain_number(row['batch_size'])}"
        if row["model"] == "tinycnn":
            return [f"F={plain_number(row['filters'])}", batch]
        return [batch]

    def family_text(self, row: Mapping[str, Any]) -> str:
        if row["model"] == "tinycnn":
            return super().family_text(row)
        return f"{row['model']} {super().family_text(row)}"

    def tidy(self, frame: Any) -> Any:
        """Epochs in order; time to accuracy reads `cum_seconds` (training only) and
        `cum_seconds_with_warmup` (what a user waits); `run` is paired (in a block) or full."""
        frame = frame.sort_values("epoch").reset_index(drop=True)
        frame["cum_seconds"] = frame["seconds"].cumsum()
        frame["cum_seconds_with_warmup"] = frame["cum_seconds"] + frame.get("warmup_s", 0.0)
        frame["run"] = "full" if missing(frame["block"].iloc[0]) else "paired"
        return frame

    def rate(self, group: Any) -> float:
        """images/s: the job's images over its timed seconds, all epochs together."""
        return group["images"].sum() / group["seconds"].sum()

    def job_columns(self, group: Any) -> dict[str, Any]:
        first = group.iloc[0]
        return {
            "engine": first["engine"],
            "filters": first.get("filters"),
            "rate_unit": self.rate_unit,
            "rate": self.rate(group),
            "warmup_s": first.get("warmup_s"),
            "accuracy": float(group.sort_values("epoch")["test_acc"].iloc[-1]),
        }

    def summary_columns(
        self, units: Any, base: Any | None, common: Any, own: Any, first: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Warm-up before the clock, and the accuracy of the full-length runs (a paired job
        trains for a time budget, not to accuracy)."""
        if not has(units, "warmup_s"):
            return {}
        full = self._full_accuracy(own, first)
        return {
            "warmup_s": float(units["warmup_s"].median()),
            "accuracy": full if full is not None else math.nan,
        }

    @staticmethod
    def _full_accuracy(own: Any, first: Mapping[str, Any]) -> float | None:
        """Final test accuracy of the configuration's full-length runs (median over seeds)."""
        if own.empty or "run" not in own.columns:
            return None
        full = own[
            (own["run"] == "full")
            & (own["model"] == first["model"])
            & (own["engine"] == first["engine"])
            & (own["filters"] == first["filters"])
            & (own["batch_size"] == first["batch_size"])
        ]
        if full.empty:
            return None
        finals = full.sort_values("epoch").groupby("job_dir").tail(1)
        return float(finals["test_acc"].median())

    def findings(self, summary: Any) -> list[Finding]:
        out = []
        tiny = summary[summary["model"] == "tinycnn"]
        for _, fam in tiny.groupby(["filters", "batch_size"], sort=True):
            where = self.family_text(fam.iloc[0])
            parallel = fam[(fam["parallelism_requested"] > 1) & fam["speedup"].notna()]
            for _, row in parallel.iterrows():
                who = f"{row['engine']} {self.parallelism_text(row['parallelism'])} ({where})"
                out.append(self.speedup_finding(row, who))
            warm = fam[fam["warmup_s"].notna()].groupby("engine")["warmup_s"].median()
            if len(warm):
                each = ", ".join(f"{e} {w:.2f} s" for e, w in warm.items())
                out.append(
                    Finding(
                        f"Warm-up before the clock at {where} (compilation, first steps; median "
                        f"over blocks): {each}."
                    )
                )
            accs = fam.groupby("engine")["accuracy"].median().dropna()
            if len(accs):
                out.append(
                    Finding(
                        f"Final test accuracy of the full-length runs at {where}: "
                        + ", ".join(f"{e} {100 * a:.1f}%" for e, a in accs.items())
                        + "."
                    )
                )
        for _, row in summary[summary["model"] == "mosaicnet"].iterrows():
            out.append(
                Finding(
                    f"MosaicNet training ({row['engine']}): {row['rate']:,.0f} images/s, "
                    f"test accuracy {100 * row['accuracy']:.2f}%."
                )
            )
        return out


@dataclass(frozen=True)
class ClassifyKind(StudyKind):
    """Classification of a mosaic: a job classifies it in timed repeats after one start-up, each
    repeat a pass from cell 0 that a time budget may end early; its rate is the median repeat's
    cells classified per second. A full run (no block) classifies the whole mosaic once, for the
    mask and the accuracy."""

    def setting(self, row: Mapping[str, Any]) -> list[str]:
        return [str(row["grid"]), f"B={plain_number(row['batch_size'])}"]

    def tidy(self, frame: Any) -> Any:
        """`run` is paired (in a block) or full; `cells_classified` is the repeat's cells (the
        whole mosaic in records from before time budgets)."""
        frame["run"] = "full" if missing(frame["block"].iloc[0]) else "paired"
        if "cells_classified" not in frame.columns:
            frame["cells_classified"] = frame["cells"]
        frame["cells_classified"] = frame["cells_classified"].fillna(frame["cells"])
        return frame

    def rate(self, group: Any) -> float:
        """cells/s: the median over the job's timed repeats of cells classified per second."""
        return float((group["cells_classified"] / group["classify_s"]).median())

    def job_columns(self, group: Any) -> dict[str, Any]:
        first = group.iloc[0]
        rate = self.rate(group)
        return {
            "mode": first["mode"],
            "grid": first["grid"],
            "cells": int(first["cells"]),
            "rate_unit": self.rate_unit,
            "rate": rate,
            # what a user waits for the whole mosaic: start-up, then every cell at this rate
            "end_to_end_rate": first["cells"] / (first["startup_s"] + first["cells"] / rate),
            "startup_s": float(first["startup_s"]),
            "accuracy": float(first["accuracy"]),
        }

    def summary_columns(
        self, units: Any, base: Any | None, common: Any, own: Any, first: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Start-up, the end-to-end rate (start-up included) and its speedup, and the mosaic
        size from which the start-up over the baseline's is paid back."""
        if not has(units, "end_to_end_rate"):
            return {}
        out: dict[str, Any] = {"startup_s": float(units["startup_s"].median())}
        full = self._full_accuracy(own, first)
        if full is not None:  # a budgeted run's own accuracy covers only its cells
            out["accuracy"] = full
        out.update(log_interval(units["end_to_end_rate"]).columns("end_to_end_rate"))
        if base is None:
            return out
        e2e = paired_ratio_interval(
            units.loc[common, "end_to_end_rate"], base.loc[common, "end_to_end_rate"]
        )
        out.update(e2e.columns("end_to_end_speedup"))
        payback = self._payback(units.loc[common], base.loc[common])
        if payback.size:
            out["payback_cells"] = float(np.median(payback))
            out["payback_cells_min"] = float(payback.min())
            out["payback_cells_max"] = float(payback.max())
        return out

    @staticmethod
    def _full_accuracy(own: Any, first: Mapping[str, Any]) -> float | None:
        """The accuracy of the whole-mosaic runs of this grid (median over seeds)."""
        if own.empty or "run" not in own.columns:
            return None
        full = own[(own["run"] == "full") & (own["grid"] == first["grid"])]
        return float(full["accuracy"].median()) if not full.empty else None

    @staticmethod
    def _payback(subject: Any, base: Any) -> np.ndarray:
        """Per unit, the mosaic size N where start-up + N / rate equals the baseline's: 0 when
        the subject starts no slower, inf when it never catches up."""
        extra = (subject["startup_s"] - base["startup_s"]).to_numpy()
        saved = (1.0 / base["rate"] - 1.0 / subject["rate"]).to_numpy()  # seconds per cell
        with np.errstate(divide="ignore", invalid="ignore"):
            cells = np.where(extra <= 0, 0.0, np.where(saved > 0, extra / saved, np.inf))
        return cells

    def findings(self, summary: Any) -> list[Finding]:
        """Speedups on the largest mosaic, the processes mode end to end on every mosaic, and
        the fastest configuration on the largest."""
        if summary.empty:
            return []
        out = []
        largest = summary[summary["cells"] == summary["cells"].max()]
        parallel = largest[(largest["mode"] != self.baseline_subject) & largest["speedup"].notna()]
        for _, row in parallel.sort_values(["mode", "parallelism"]).iterrows():
            who = f"{row['mode']} {self.parallelism_text(row['parallelism'])} on {row['grid']}"
            who += f" (B={plain_number(row['batch_size'])})"
            out.append(self.speedup_finding(row, who))
        # What users pay: end to end, and the mosaic size from which start-up is paid back.
        for _, row in summary[summary["mode"] == "processes"].sort_values("cells").iterrows():
            if missing(row["end_to_end_speedup"]):
                continue
            out.append(self._end_to_end(row))
        best = largest.loc[largest["rate"].idxmax()]
        out.append(
            Finding(
                f"Fastest steady-state classification of the largest mosaic ({best['grid']}, "
                f"{int(best['cells']):,} cells): {best['mode']} "
                f"{self.parallelism_text(best['parallelism'])}, "
                f"B={plain_number(best['batch_size'])}, at {best['rate']:,.0f} cells/s "
                f"[{best['rate_low']:,.0f}, {best['rate_high']:,.0f}]; accuracy "
                f"{100 * best['accuracy']:.2f}%."
            )
        )
        return out

    def _end_to_end(self, row: Mapping[str, Any]) -> Finding:
        interval = Interval.from_columns(row, "end_to_end_speedup")
        e2e = interval.text()
        payback = row["payback_cells"]
        if missing(payback):
            pays = ""
        elif payback == float("inf"):
            pays = "; its start-up is never paid back at this speed"
        else:
            pays = (
                f"; start-up is paid back from about {payback:,.0f} cells (median over blocks, "
                f"range {row['payback_cells_min']:,.0f}–{row['payback_cells_max']:,.0f})"
            )
        who = f"{row['mode']} {self.parallelism_text(row['parallelism'])} on {row['grid']}"
        over = self.baseline_name(row)
        return Finding(
            f"End to end (start-up {row['startup_s']:.2f} s included), {who}: {e2e} against "
            f"{over}{pays}.{flag_note(row)}",
            comparison=f"{self.comparison_text(row, 'parallelism')} over {over}, end to end",
            ratio=interval,
            verdict=interval.direction("faster", "slower"),
            blocks=int(row["blocks"]),
            flagged_blocks=flagged_blocks(row),
            detail=f"start-up {row['startup_s']:.2f} s included{pays}",
        )


# The tidy tables: the columns each must hold and which are numbers, and those the report shows.
TRAIN_SCHEMA = (
    ("model", "engine", "parallelism_requested", "parallelism", "epoch", "seconds",
     "images_per_s", "test_acc"),
    ("parallelism_requested", "parallelism", "epoch", "seconds", "images_per_s", "test_acc"),
)  # fmt: skip
TRAIN_SHOWN = (
    "model", "engine", "parallelism_requested", "parallelism", "filters", "batch_size", "seed",
    "run", "block", "epoch", "images", "seconds", "cum_seconds", "warmup_s", "images_per_s",
    "train_loss", "train_acc", "test_loss", "test_acc", "flagged",
)  # fmt: skip
CLASSIFY_SCHEMA = (
    ("mode", "parallelism_requested", "parallelism", "cells", "classify_s", "cells_per_s",
     "accuracy"),
    ("parallelism_requested", "parallelism", "cells", "classify_s", "cells_per_s", "accuracy"),
)  # fmt: skip
CLASSIFY_SHOWN = (
    "run", "mode", "parallelism_requested", "parallelism", "grid", "cells", "cells_classified",
    "distinct_digits",
    "batch_size", "seed", "block", "repeat", "startup_s", "classify_s", "total_s", "cells_per_s",
    "end_to_end_cells_per_s", "accuracy", "flagged",
)  # fmt: skip

KINDS: dict[str, StudyKind] = {
    k.name: k
    for k in (
        TrainKind(
            "train",
            noun="training",
            output="metrics.csv",
            subject="engine",
            unit="thread",
            rate_unit="images/s",
            family=("model", "engine", "filters", "batch_size"),
            config=("ranks", "parallelism_requested"),
            baseline_subject=None,  # the same engine at 1 thread
            order=("model", "engine", "filters", "batch_size", "parallelism_requested", "ranks"),
            legend_keys=("filters", "batch_size"),
            schema=TRAIN_SCHEMA,
            shown=TRAIN_SHOWN,
            row_text="job × epoch",
            roofline_title="Training (FLOPs of forward + backward)",
        ),
        ClassifyKind(
            "classify",
            noun="classification",
            output="result.csv",
            subject="mode",
            unit="worker",
            rate_unit="cells/s",
            family=("model", "grid", "cells", "batch_size"),
            config=("mode", "ranks", "parallelism_requested"),
            baseline_subject="sequential",
            order=("model", "mode", "cells", "batch_size", "parallelism_requested", "ranks"),
            legend_keys=("grid", "batch_size"),
            schema=CLASSIFY_SCHEMA,
            shown=CLASSIFY_SHOWN,
            row_text="job × repeat",
            roofline_title="Classification (forward FLOPs)",
        ),
    )
}
