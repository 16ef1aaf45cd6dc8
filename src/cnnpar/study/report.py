"""The study report: one self-contained HTML file built from the tables and the figures.

The page answers first: a headline table (per workload, its fastest configuration), then the
findings as one sortable table (each ratio with its 95% interval, verdict and interference
flag), then figures, the method and the tables. Figures are embedded as base64 PNGs, the sort
is a few lines of inline script, and the page has no external resources, so the file can be
mailed or opened offline. Everything comes from the tables (``summary.csv``,
``comparisons.csv``); nothing is re-measured or re-aggregated here.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import html
import io
import json
import logging
import os
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any

import pandas as pd

from cnnpar.io import write_text
from cnnpar.measure.intervals import Interval
from cnnpar.record import RunRecord
from cnnpar.registry import FIGURES
from cnnpar.study.kinds import (
    KINDS,
    Finding,
    flag_note,
    flagged_blocks,
    plain_number,
    text_or_empty,
)
from cnnpar.study.tables import NOT_FORMED, read_table

log = logging.getLogger(__name__)

# --- findings -----------------------------------------------------------------------------


def _ratio(row: pd.Series, name: str) -> Interval:
    """The interval a table row holds in `name`, `name`_low, `name`_high."""
    return Interval.from_columns(row, name)


def findings(summary: pd.DataFrame, comparisons: pd.DataFrame | None = None) -> list[str]:
    """Plain sentences stating what the tables show, each ratio with its 95% interval; a
    ratio whose interval admits both directions is reported as not resolved."""
    return [finding.text for finding in findings_of(summary, comparisons)]


def findings_of(summary: pd.DataFrame, comparisons: pd.DataFrame | None = None) -> list[Finding]:
    """The findings: per kind, its own (speedups first), its subjects (engines, modes) against
    each other and which roof binds each configuration; then the highest roofline fraction,
    configurations that ran with fewer cores than asked, and ratios not formed. Over several
    machines, each machine's, named."""
    if summary.empty:
        return [Finding("No results: the summary table is empty.")]
    comparisons = comparisons if comparisons is not None else pd.DataFrame()
    if "machine" in summary.columns and summary["machine"].nunique() > 1:
        out = []
        for machine, part in summary.groupby("machine", sort=True):
            name = part["machine_name"].iloc[0]
            same = comparisons[comparisons["machine"] == machine] if len(comparisons) else None
            out += [
                dataclasses.replace(
                    f,
                    text=f"On {name}: {f.text}",
                    comparison=f.comparison and f"On {name}, {f.comparison}",
                )
                for f in findings_of(part, same)
            ]
        across = comparisons[comparisons["machine"].isna()] if len(comparisons) else None
        return out + _not_formed_findings(summary.iloc[0:0], across)
    out = []
    for kind in KINDS.values():
        out += kind.findings(kind.rows(summary))
        out += _comparison_findings(kind.rows(comparisons))
        out += kind.roof_findings(kind.rows(summary))
    return [
        *out,
        *_roofline_findings(summary[summary["roofline_fraction"].notna()]),
        *_capped_findings(summary),
        *_not_formed_findings(summary, comparisons),
    ]


def _not_formed_findings(summary: pd.DataFrame, comparisons: pd.DataFrame | None) -> list[Finding]:
    """Ratios whose two sides never ran on one machine: named, with why, never computed."""
    out = []
    if "speedup_verdict" in summary.columns:
        for _, row in summary[summary["speedup_verdict"] == NOT_FORMED].iterrows():
            kind = KINDS[row["study"]]
            out.append(
                Finding(
                    f"{kind.name} {kind.describe(row)} on {row['machine_name']}: no speedup "
                    f"over {row['baseline']} formed: {row['speedup_not_formed']}.",
                    comparison=f"{kind.comparison_text(row, 'parallelism_requested')} over "
                    f"{row['baseline']}",
                    verdict=NOT_FORMED,
                    blocks=int(row["blocks"]),
                    detail=str(row["speedup_not_formed"]),
                )
            )
    if comparisons is not None and "verdict" in comparisons.columns:
        for _, row in comparisons[comparisons["verdict"] == NOT_FORMED].iterrows():
            kind = KINDS[row["study"]]
            out.append(
                Finding(
                    f"{row['subject']} against {row['reference']} ({row['study']} at "
                    f"{row['family']}): not formed: {row['not_formed']}.",
                    comparison=f"{kind.noun} {row['family']}: {row['subject']} over "
                    f"{row['reference']}",
                    verdict=NOT_FORMED,
                    detail=str(row["not_formed"]),
                )
            )
    return out


def _comparison_findings(comparisons: pd.DataFrame) -> list[Finding]:
    out = []
    if "verdict" in comparisons.columns:
        comparisons = comparisons[comparisons["verdict"] != NOT_FORMED]
    for _, row in comparisons.iterrows():
        interval = _ratio(row, "ratio")
        ratio = interval.text()
        where = f"{row['study']} at {row['family']}"
        direction = interval.direction("faster than", "slower than")
        rates = (
            f"{row['subject_rate']:,.0f} against {row['reference_rate']:,.0f} {row['rate_unit']}"
        )
        if direction == "not resolved":
            text = (
                f"{row['subject']} against {row['reference']} ({where}): not resolved on this "
                f"machine, {ratio}.{flag_note(row)}"
            )
        else:
            text = (
                f"{row['subject']} is {ratio} {direction} {row['reference']} ({where}; "
                f"{rates}).{flag_note(row)}"
            )
        out.append(
            Finding(
                text,
                comparison=f"{KINDS[row['study']].noun} {row['family']}: {row['subject']} over "
                f"{row['reference']}",
                ratio=interval,
                verdict=interval.direction("faster", "slower"),
                blocks=int(row["blocks"]),
                flagged_blocks=flagged_blocks(row),
                detail=rates,
                precision=text_or_empty(row.get("precision")),
            )
        )
    return out


def _roofline_findings(roof: pd.DataFrame) -> list[Finding]:
    if roof.empty:
        return []
    best = roof.loc[roof["roofline_fraction"].idxmax()]
    kind = KINDS[best["study"]]
    who = best[kind.subject]
    par = kind.parallelism_text(best["parallelism"])
    share = _ratio(best, "roofline_fraction").text("{:.0f}", "%", scale=100.0)
    return [
        Finding(
            f"Highest fraction of the roofline: {best['study']} {best['model']} {who} with "
            f"{par}, {best['gflops']:.1f} GFLOP/s = {share} of its own matmul probe "
            f"({best['roofline_gflops']:.1f} GFLOP/s, {best['roofline_device']})."
            f"{flag_note(best)}"
        )
    ]


def _capped_findings(summary: pd.DataFrame) -> list[Finding]:
    capped = summary[summary["parallelism"] < summary["parallelism_requested"]]
    return [
        Finding(
            f"Note: {row['study']} {row[KINDS[row['study']].subject]} "
            f"asked for {plain_number(row['parallelism_requested'])} threads/workers but ran "
            f"with {plain_number(row['parallelism'])} (Snakemake caps a job's threads at "
            "--cores); its efficiency uses the effective count."
        )
        for _, row in capped.iterrows()
    ]


# --- the headline -------------------------------------------------------------------------

HEADLINE_COLUMNS = [
    "study", "machine", "machine_name", "workload", "configuration", "parallelism_requested",
    "parallelism", "blocks", "rate_unit", "rate", "rate_low", "rate_high", "baseline",
    "speedup", "speedup_low", "speedup_high", "speedup_verdict", "efficiency",
    "efficiency_low", "efficiency_high", "roofline_fraction", "roofline_fraction_low",
    "roofline_fraction_high", "flagged_blocks",
]  # fmt: skip


def headline(summary: pd.DataFrame) -> pd.DataFrame:
    """One row per workload and machine: a kind's configurations that compute the same thing
    (`StudyKind.peers`: training per model, filters and batch size; classification per grid and
    batch size) and its fastest configuration there, the one with the highest rate estimate.
    Columns (`HEADLINE_COLUMNS`) are the summary's for that row: `rate` in `rate_unit` with its
    95% interval; `speedup` over `baseline` (its own family's base), `efficiency` (speedup per
    core, a fraction) and `roofline_fraction` (of its own matmul probe), each with its interval;
    `speedup_verdict` (baseline, higher, lower, not resolved, not formed); `flagged_blocks`,
    pairing units with interference; `workload` and `configuration` in words."""
    rows = []
    for kind in KINDS.values():
        part = kind.rows(summary)
        part = part[part["rate"].notna()]
        if part.empty:
            continue
        fastest = part.groupby(["machine", *kind.peers], dropna=False)["rate"].idxmax()
        # in the kind's own order: mosaics by size, not by the grid's name
        order = ["machine", *(k for k in kind.order if k in kind.peers)]
        for _, best in part.loc[fastest].sort_values(order, na_position="first").iterrows():
            row = best.reindex(HEADLINE_COLUMNS)
            row["workload"] = kind.workload_text(best)
            row["configuration"] = kind.layout_text(
                best[kind.subject], best["parallelism_requested"], best.get("ranks")
            )
            rows.append(row)
    return pd.DataFrame(rows, columns=HEADLINE_COLUMNS).reset_index(drop=True)


def headline_html(summary: pd.DataFrame) -> str:
    """The headline table: per workload its fastest configuration, rate, speedup over its base,
    efficiency and fraction of its roofline, each with its 95% interval."""
    top = headline(summary)
    if top.empty:
        return '<p class="empty">No results: the summary table is empty.</p>'
    several = top["machine"].nunique() > 1
    head = ["workload", *(["machine"] * several), "fastest configuration", "rate [95% CI]",
            "speedup over its base [95% CI]", "efficiency [95% CI]", "% of its roofline [95% CI]",
            "blocks", "⚠"]  # fmt: skip
    body = []
    for _, r in top.iterrows():
        configuration = r["configuration"]
        if r["parallelism"] < r["parallelism_requested"]:
            configuration += f" (ran on {plain_number(r['parallelism'])})"
        cells = [
            (r["workload"], ""),
            *([(r["machine_name"], "")] * several),
            (configuration, ""),
            (_interval(r, "rate", "{:,.0f}", ""), r["rate_unit"]),
            _speedup_cell(r),
            (_interval(r, "efficiency", "{:.0f}", "%", 100.0), ""),
            (_interval(r, "roofline_fraction", "{:.0f}", "%", 100.0), ""),
            (str(int(r["blocks"])), ""),
        ]
        tds = "".join(f"<td>{html.escape(text)}{_detail(more)}</td>" for text, more in cells)
        body.append(f"<tr>{tds}{_flag_cell(flagged_blocks(r))}</tr>")
    ths = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    return (
        f'<table class="data headline"><thead><tr>{ths}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table>"
    )


def _detail(text: str) -> str:
    """A cell's second, quieter line."""
    return f'<div class="detail">{html.escape(text)}</div>' if text else ""


def _interval(row: pd.Series, name: str, fmt: str, unit: str, scale: float = 1.0) -> str:
    if pd.isna(row[name]):
        return ""
    return Interval.from_columns(row, name).text(fmt, unit, scale)


def _speedup_cell(row: pd.Series) -> tuple[str, str]:
    """The speedup with its interval, and under it what it is over and a verdict that is not
    a direction."""
    verdict = row["speedup_verdict"]
    if verdict == "baseline":
        return "1×", "it is the base"
    if verdict == NOT_FORMED:
        return "not formed", str(row.get("speedup_not_formed") or "")
    if pd.isna(row["speedup"]):
        return "", "no base in its family"
    note = "; not resolved" if verdict == "not resolved" else ""
    return _interval(row, "speedup", "{:.2f}", "×"), f"over {row['baseline']}{note}"


def _flag_cell(n: int) -> str:
    """The interference cell: '⚠ n' linking to the banner, sortable by n."""
    if n <= 0:
        return '<td data-sort="0"></td>'
    return (
        f'<td data-sort="{n}" class="flag"><a href="#interference" title="rests on {n} '
        f'block(s) with interference">⚠ {n}</a></td>'
    )


# --- the findings table ---------------------------------------------------------------------

FINDINGS_HEAD = [
    "comparison", "ratio", "95% interval", "verdict", "blocks", "target", "interference",
]  # fmt: skip


def findings_html(found: Sequence[Finding]) -> str:
    """The findings with a comparison as a sortable table (`FINDINGS_HEAD`: what over what and
    where, the ratio, its 95% interval, the verdict, the paired blocks, the blocks with
    interference), each row's full sentence as its tooltip; the rest as notes below."""
    rows = []
    for f in found:
        if not f.comparison:
            continue
        ratio = f.ratio
        has_ratio = ratio is not None and not pd.isna(ratio.estimate)
        estimate = f"{ratio.estimate:.2f}×" if has_ratio else ""
        bounds = f"[{ratio.low:.2f}, {ratio.high:.2f}]" if has_ratio and ratio.resolved else ""
        detail = _detail(f.detail)
        verdict = f.verdict.replace(" ", "-")
        rows.append(
            f'<tr class="verdict-{verdict}" title="{html.escape(f.text)}">'
            f"<td>{html.escape(f.comparison)}{detail}</td>"
            f'<td data-sort="{ratio.estimate if has_ratio else ""}">{estimate}</td>'
            f'<td data-sort="{ratio.low if bounds else ""}">{bounds}</td>'
            f"<td>{html.escape(f.verdict)}</td>"
            f"<td>{f.blocks}</td><td>{html.escape(f.precision)}</td>"
            f"{_flag_cell(f.flagged_blocks)}</tr>"
        )
    notes = "".join(f"<li>{html.escape(f.text)}</li>" for f in found if not f.comparison)
    out = ""
    if rows:
        ths = "".join(f"<th>{h}</th>" for h in FINDINGS_HEAD)
        out += (
            f'<div class="scroll"><table class="data findings sortable"><thead><tr>{ths}</tr>'
            f"</thead><tbody>\n{chr(10).join(rows)}\n</tbody></table></div>"
        )
    if notes:
        out += f'<ul class="notes">{notes}</ul>'
    return out


# --- machines side by side ------------------------------------------------------------------


def _who(row: pd.Series) -> str:
    """'numba 2 threads' of a machines-table row."""
    kind = KINDS[row["study"]]
    return f"{row[kind.subject]} {kind.parallelism_text(row['parallelism_requested'])}"


def _side_rate(row: pd.Series) -> str:
    rate = Interval.from_columns(row, "rate").text("{:,.0f}", "")
    return f"{rate} {row['rate_unit']}"


def machine_findings(machines: pd.DataFrame) -> list[str]:
    """Sentences over the machines table: which sides it holds, the fastest side per workload
    (its best configuration against every other side's best), and, per configuration, only the
    differences from the fastest side whose 95% interval resolves; the rest are counted."""
    if machines.empty:
        return ["No result set to put side by side: the summary table is empty."]
    sides = list(dict.fromkeys(machines["side"]))
    if len(sides) == 1:
        return [
            f"One machine in this report: {sides[0]}. Name other result sets (results "
            "directories, or archives made by `cnnpar pack`) in the config's compare_with to "
            "put other machines or commits beside it."
        ]
    out = [
        f"{len(sides)} machines side by side: "
        + "; ".join(
            f"{side} (git {rev}, cnnpar {ver})"
            for side, rev, ver in machines.drop_duplicates("side")[
                ["side", "git_revision", "cnnpar_version"]
            ].itertuples(index=False)
        )
        + "."
    ]
    for workload, part in machines[machines["side_best"].astype(bool)].groupby("workload"):
        top = part[part["workload_fastest"].astype(bool)].iloc[0]
        lead = f"Fastest machine for {workload}: {top['side']}, {_who(top)} at {_side_rate(top)}"
        behind, unresolved = [], []
        for _, row in part[~part["workload_fastest"].astype(bool)].iterrows():
            if row["vs_workload_verdict"] in ("faster", "slower"):
                ratio = Interval.from_columns(row, "vs_workload").text()
                behind.append(f"{row['side']} reaches {ratio} of it at best ({_who(row)})")
            else:
                unresolved.append(row["side"])
        if unresolved:
            lead = lead.replace("Fastest machine", "Highest estimate", 1)
            behind.append(f"its lead over {' and '.join(unresolved)} does not resolve")
        out.append(f"{lead}; {'; '.join(behind)}.")
    rest = 0
    for _, row in machines[machines["vs_fastest_verdict"].astype(str) != ""].iterrows():
        if row["vs_fastest_verdict"] not in ("faster", "slower"):
            rest += 1
            continue
        ratio = Interval.from_columns(row, "vs_fastest").text()
        out.append(
            f"{row['configuration']}: {row['side']} runs at {ratio} the rate of "
            f"{row['fastest_side']} ({_side_rate(row)}; unpaired, Welch's t on the log rates)."
        )
    if rest:
        out.append(
            f"{rest} other difference(s) from the fastest machine do not resolve: their 95% "
            "intervals admit both a gain and a loss (see the table)."
        )
    return out


def _fmt_machines(machines: pd.DataFrame) -> pd.DataFrame:
    """The machines table as people read it: one row per configuration and side."""
    rows = []
    for _, r in machines.sort_values(["configuration", "side"]).iterrows():
        vs = ""
        if r["fastest"]:
            vs = "fastest"
        elif r["vs_fastest_verdict"]:
            ratio = Interval.from_columns(r, "vs_fastest")
            vs = f"{ratio.text()} ({r['vs_fastest_verdict']})" if pd.notna(r["vs_fastest"]) else ""
        par = plain_number(r["parallelism"])
        if r["parallelism"] != r["parallelism_requested"]:
            par += f" (asked {plain_number(r['parallelism_requested'])})"
        roof = ""
        if pd.notna(r["roofline_fraction"]):
            roof = Interval.from_columns(r, "roofline_fraction").text("{:.0f}", "%", scale=100.0)
        speedup = "" if pd.isna(r["speedup"]) else Interval.from_columns(r, "speedup").text()
        rows.append(
            {
                "configuration": r["configuration"],
                "machine (result set)": r["side"],
                "ran with": par,
                "rate [95% CI]": _side_rate(r),
                "speedup over its own baseline": speedup,
                "% own roofline": roof,
                "against the fastest machine": vs,
                "blocks": int(r["blocks"]),
            }
        )
    return pd.DataFrame(rows)


def banner_html(jobs: pd.DataFrame) -> str:
    """The warning that opens the report when any timed job saw interference."""
    if jobs.empty or not jobs["flagged"].astype(bool).any():
        return ""
    flagged = jobs[jobs["flagged"].astype(bool)]
    items = "".join(
        f"<li><b>{html.escape(str(row['label']))}</b>: {html.escape(str(row['flag_reasons']))}</li>"
        for _, row in flagged.iterrows()
    )
    return (
        '<section id="interference" class="banner"><h2>⚠ Interference detected in '
        f"{len(flagged)} of {len(jobs)} timed jobs</h2><p>Other processes took CPU time from "
        "these jobs, or the machine's speed changed under them. Findings that rest on them are "
        "marked ⚠; re-run the study on a quiet machine before trusting those.</p>"
        f"<ul>{items}</ul></section>"
    )


# How the study meets Hoefler & Belli's twelve rules (SC'15), as the report states it.
METHOD = [
    ("1. Speedups state their base case",
     "every speedup names its baseline (the same engine at 1 thread, or sequential "
     "classification) and that baseline's absolute rate."),
    ("2. Subsets of benchmarks",
     "every configured engine, mode, grid and batch size is reported; nothing is dropped "
     "after the fact (engines this machine cannot run are skipped at start-up with a warning)."),
    ("3. Rates of work done",
     "rates count images or cells processed in the timed region; GFLOP/s come from the "
     "network's counted FLOPs per image, not from a guess."),
    ("4. Summarising ratios",
     "a ratio is formed inside each paired block and summarised by the geometric mean over "
     "blocks, which equals the ratio of the geometric mean rates; no ratio of ratios."),
    ("5. Deterministic or random",
     "rates vary from block to block, so each is reported with an interval, never as one number."),
    ("6. Intervals",
     "95% intervals are Student t intervals on the log of the per-block values "
     "(exact for log-normal noise; with 3-5 blocks a bootstrap or an order-statistic interval "
     "would cover far less than 95%). A finding whose interval admits both directions says "
     "'not resolved on this machine'."),
    ("7. Significance of differences",
     "a direction is stated only when the whole 95% interval lies on one side of 1."),
    ("8. Spread of the population",
     "classify jobs time several repeats each; train jobs keep one row per epoch; "
     "tables/jobs.csv has every block's raw rate."),
    ("9. Experimental set-up",
     "the environment (CPU, CPUs available to the job, versions, commit, allocator, "
     "thread counts as they took effect) is recorded with every job and shown below."),
    ("10. Parallel time and interference",
     "timed jobs hold a machine-wide lock so they never overlap; each records other processes' "
     "CPU share, steal time and matmul probes before and after, and is flagged above the "
     "configured limits. Each comparison family of a block is one Snakemake job that runs "
     "its configurations back to back in the config's order, reversed in even blocks "
     "(cnnpar.study.plan), so the runs a ratio compares ran seconds apart and neither side "
     "always goes first: the order holds by construction, not by scheduling. An engine that "
     "switches threads in one process (numba, torch) trains every thread count of a block in "
     "one command, the counts taking turns in 0.1-second windows, so its speedup compares "
     "windows a fraction of a second apart."),
    ("11. Upper bounds",
     "each job's roofline is its own: a float32 matmul probe (compute roof) and a STREAM "
     "triad in its threads' L2 and in main memory (bandwidth roofs) at its own thread count "
     "(GPU jobs: on their GPU); the attainable rate is the lower of the compute roof and the "
     "arithmetic intensity (counted FLOPs over the model's compulsory bytes) times the "
     "bandwidth that applies; the speedup figures draw ideal linear scaling."),
    ("12. Plots",
     "figures show intervals, label units and state the base case in their captions."),
]  # fmt: skip


def method_html() -> str:
    items = "".join(
        f"<li><b>{html.escape(rule)}</b>: {html.escape(how)}</li>" for rule, how in METHOD
    )
    return f'<ul class="method">{items}</ul>'


# --- HTML pieces --------------------------------------------------------------------------


# A raster wider than this (the mask of a big mosaic is thousands of pixels a side) is embedded
# as a downscaled JPEG: the page stays a few hundred kB, and figures/ keeps the full image.
MAX_EMBED_WIDTH = 1400


def _img(path: str | os.PathLike[str], alt: str) -> str:
    from PIL import Image

    raw = Path(path).read_bytes()
    mime = "image/png"
    with Image.open(io.BytesIO(raw)) as image:
        if image.width > MAX_EMBED_WIDTH:
            height = round(image.height * MAX_EMBED_WIDTH / image.width)
            small = image.convert("RGB").resize((MAX_EMBED_WIDTH, height), Image.LANCZOS)
            buffer = io.BytesIO()
            small.save(buffer, format="JPEG", quality=88)
            raw, mime = buffer.getvalue(), "image/jpeg"
    data = base64.b64encode(raw).decode("ascii")
    return f'<img src="data:{mime};base64,{data}" alt="{html.escape(alt)}">'


def figures_html(figures: Sequence[str | os.PathLike[str]], section: str = "figures") -> str:
    """The figures the registry places in `section` (figures, machines), in registry order;
    a file the registry does not know goes to the figures section."""
    order = list(FIGURES)
    blocks = []
    for path in sorted(
        figures, key=lambda p: order.index(Path(p).stem) if Path(p).stem in order else len(order)
    ):
        stem = Path(path).stem
        figure = FIGURES.get(stem)
        if (figure.section if figure else "figures") != section:
            continue
        title = figure.title if figure else stem
        css = "figure mask" if stem == "mask" else "figure"
        blocks.append(
            f'<figure class="{css}" id="fig-{html.escape(stem)}">'
            f"<h3>{html.escape(title)}</h3>{_img(path, title)}"
            f"<figcaption>{html.escape(figure.caption if figure else '')}</figcaption></figure>"
        )
    return "\n".join(blocks)


def _fmt_summary(summary: pd.DataFrame) -> pd.DataFrame:
    """The summary as people read it: units, ×, %, intervals, no NaN noise."""

    def fmt(value: Any, pattern: str) -> str:
        return "" if pd.isna(value) else pattern.format(value)

    def interval(r: pd.Series, name: str, pattern: str, scale: float = 1.0) -> str:
        if pd.isna(r[name]):
            return ""
        return Interval.from_columns(r, name).text(pattern, "", scale)

    rows = []
    for _, r in summary.iterrows():
        kind = KINDS[r["study"]]
        who = r[kind.subject]
        config = kind.family_text(r).replace(",", "")
        par = plain_number(r["parallelism"])
        if r["parallelism"] != r["parallelism_requested"]:
            par += f" (asked {plain_number(r['parallelism_requested'])})"
        rows.append(
            {
                "study": f"{r['study']} {r['model']}",
                "engine / mode": who,
                "config": config,
                "threads / workers": par,
                "rate [95% CI]": interval(r, "rate", "{:,.0f}") + f" {r['rate_unit']}",
                "speedup": interval(r, "speedup", "{:.2f}"),
                "verdict": fmt(r["speedup_verdict"], "{}"),
                "efficiency %": interval(r, "efficiency", "{:.0f}", 100.0),
                "end to end": interval(r, "end_to_end_rate", "{:,.0f}"),
                "accuracy": fmt(r["accuracy"], "{:.2%}"),
                "% roofline": interval(r, "roofline_fraction", "{:.0f}", 100.0),
                "blocks": int(r["blocks"]),
                "⚠": "⚠" if r.get("flagged_blocks", 0) else "",
            }
        )
    return pd.DataFrame(rows)


def tidy_html(tables: Mapping[str, pd.DataFrame]) -> str:
    """Each kind's tidy table, folded, its main columns shown."""
    return "\n".join(
        f"  <details><summary>tables/{kind.name}.csv: {len(frame)} rows ({kind.row_text})"
        f'</summary>\n    <div class="scroll">{table_html(frame, kind.shown)}</div></details>'
        for kind in KINDS.values()
        for frame in [tables.get(kind.name, pd.DataFrame())]
    )


def table_html(frame: pd.DataFrame, columns: Sequence[str] | None = None) -> str:
    if frame.empty:
        return '<p class="empty">(no rows)</p>'
    if columns is not None:
        frame = frame[[c for c in columns if c in frame.columns]]
    return frame.to_html(
        index=False, border=0, classes="data", na_rep="", float_format=lambda v: f"{v:.4g}"
    )


def env_html(env: dict[str, Any]) -> str:
    rows = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_env_value(v))}</td></tr>"
        for k, v in sorted(env.items())
    )
    return f'<table class="kv">{rows}</table>'


def _env_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True)
    return str(value)


def study_note(jobs: pd.DataFrame, summary: pd.DataFrame) -> str:
    """The code versions the records came from (per kind; cnnpar.measure.code), the paired
    blocks the study ran, and how many headline intervals met the stopping rule's target."""
    if jobs.empty:
        return ""
    versions = "; ".join(
        f"{study} {', '.join(sorted(set(g['code_version'].astype(str))))}"
        for study, g in jobs.groupby("study", sort=True)
    )
    out = f"Measured code versions: {versions}. Paired blocks: {jobs['block'].nunique()}."
    if "precision" in summary.columns:
        verdicts = summary["precision"].astype(object).fillna("")
        verdicts = verdicts[verdicts != ""]
        if len(verdicts):
            counts = verdicts.value_counts()
            out += (
                " Speedups against the target: "
                + ", ".join(f"{n} {verdict}" for verdict, n in counts.items())
                + "."
            )
    return out


def render(
    title: str,
    tables: dict[str, pd.DataFrame],
    figures: Sequence[str | os.PathLike[str]],
    env: dict[str, Any],
    config_yaml: str,
) -> str:
    template = Template(
        resources.files("cnnpar").joinpath("templates/report.html").read_text(encoding="utf-8")
    )
    summary = tables["summary"]
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    meta = (
        f"Generated {now} on {env.get('hostname', '?')}: {env.get('cpu_model', '?')}, "
        f"{env.get('logical_cores', '?')} logical cores ({env.get('cpus_available', '?')} "
        f"available to the jobs), {env.get('ram_gib', '?')} GiB; "
        f"cnnpar {env.get('cnnpar', '?')} at git {env.get('git_revision', '?')}."
    )
    meta += " " + study_note(tables.get("jobs", pd.DataFrame()), summary)
    machines = tables.get("machines", pd.DataFrame())
    machine_items = "\n".join(f"<li>{html.escape(s)}</li>" for s in machine_findings(machines))
    return template.substitute(
        title=html.escape(title),
        meta=html.escape(meta),
        banner=banner_html(tables.get("jobs", pd.DataFrame())) + not_as_named_html(tables),
        headline=headline_html(summary),
        findings=findings_html(findings_of(summary, tables.get("comparisons"))),
        method=method_html(),
        figures=figures_html(figures),
        machine_findings=machine_items,
        machine_figures=figures_html(figures, "machines"),
        machines_table=table_html(_fmt_machines(machines)) if not machines.empty else "",
        summary_table=table_html(_fmt_summary(summary)) if not summary.empty else "",
        tidy_tables=tidy_html(tables),
        config=html.escape(config_yaml),
        environment=env_html(env),
    )


def write_report(
    out: str | os.PathLike[str],
    title: str,
    tables: dict[str, str | os.PathLike[str]],
    figures: Sequence[str | os.PathLike[str]],
    record: str | os.PathLike[str],
    config_yaml: str,
) -> Path:
    """Render the report from the tables (each checked as it is read), the figures and the
    environment of a run record; write it atomically and return its path."""
    env = RunRecord.read(record).environment
    frames = {name: read_table(path, name) for name, path in tables.items()}
    page = render(title, frames, figures, env, config_yaml)
    write_text(out, page)
    log.info("report written to %s (%d bytes)", out, len(page))
    return Path(out)


def not_as_named_html(tables: Mapping[str, pd.DataFrame]) -> str:
    """The warning that opens the report when a run did not run as named: the reasons
    `RunRecord.not_as_named` gave (numba's CUDA simulator, JIT off, CPUs narrowed), which the
    train and classify tables carry in their `not_as_named` column."""
    runs: dict[str, str] = {}
    for kind in KINDS.values():
        frame = tables.get(kind.name, pd.DataFrame())
        if "not_as_named" not in frame.columns:
            continue
        reasons = frame["not_as_named"]
        for _, row in frame[reasons.notna() & (reasons.astype(str) != "")].iterrows():
            runs.setdefault(str(row["job_dir"]), str(row["not_as_named"]))
    if not runs:
        return ""
    items = "".join(
        f"<li><b>{html.escape(job)}</b>: {html.escape(why)}</li>" for job, why in runs.items()
    )
    return (
        '<section id="not-as-named" class="banner"><h2>⚠ '
        f"{len(runs)} run(s) did not run as named</h2><p>Their timings do not measure what their "
        "labels say, and neither do findings that rest on them; fix the setting named and "
        f"re-run them.</p><ul>{items}</ul></section>"
    )
