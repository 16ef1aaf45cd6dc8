"""The study report: one self-contained HTML file built from the tables and the figures.

Figures are embedded as base64 PNGs and the page has no external resources, so the file can
be mailed or opened offline. The findings are sentences generated from ``summary.csv``
(numbers and intervals already in the tables; nothing is re-measured or re-aggregated here).
"""

from __future__ import annotations

import base64
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
from cnnpar.study.kinds import KINDS, plain_number
from cnnpar.study.tables import NOT_FORMED, read_table

log = logging.getLogger(__name__)

# Columns of the tidy tables shown in the page (the CSVs hold all of them).
TRAIN_COLUMNS = [
    "model", "engine", "parallelism_requested", "parallelism", "filters", "batch_size", "seed",
    "run", "block", "epoch", "images", "seconds", "cum_seconds", "warmup_s", "images_per_s",
    "train_loss", "train_acc", "test_loss", "test_acc", "flagged",
]  # fmt: skip
CLASSIFY_COLUMNS = [
    "mode", "parallelism_requested", "parallelism", "grid", "cells", "distinct_digits",
    "batch_size", "seed", "block", "repeat", "startup_s", "classify_s", "total_s", "cells_per_s",
    "end_to_end_cells_per_s", "accuracy", "flagged",
]  # fmt: skip


# --- findings -----------------------------------------------------------------------------


_threads = KINDS["train"].parallelism_text
_workers = KINDS["classify"].parallelism_text


def _ratio(row: pd.Series, name: str) -> Interval:
    """The interval a table row holds in `name`, `name`_low, `name`_high."""
    return Interval.from_columns(row, name)


def _flag_note(row: pd.Series) -> str:
    n = row.get("flagged_blocks")
    if pd.notna(n) and int(n) > 0:
        return f" ⚠ rests on {int(n)} block(s) with interference (see the banner)."
    return ""


def findings(summary: pd.DataFrame, comparisons: pd.DataFrame | None = None) -> list[str]:
    """Plain sentences stating what the tables show, each ratio with its 95% interval; a
    ratio whose interval admits both directions is reported as not resolved."""
    if summary.empty:
        return ["No results: the summary table is empty."]
    comparisons = comparisons if comparisons is not None else pd.DataFrame()
    if "machine" in summary.columns and summary["machine"].nunique() > 1:
        # One study over several machines: the findings of each, named.
        out = []
        for machine, part in summary.groupby("machine", sort=True):
            name = part["machine_name"].iloc[0]
            same = comparisons[comparisons["machine"] == machine] if len(comparisons) else None
            out += [f"On {name}: {s}" for s in findings(part, same)]
        across = comparisons[comparisons["machine"].isna()] if len(comparisons) else None
        return out + _not_formed_findings(summary.iloc[0:0], across)
    return [
        *_train_findings(summary[summary["study"] == "train"]),
        *_comparison_findings(comparisons),
        *_classify_findings(summary[summary["study"] == "classify"]),
        *_roofline_findings(summary[summary["roofline_fraction"].notna()]),
        *_capped_findings(summary),
        *_not_formed_findings(summary, comparisons),
    ]


def _not_formed_findings(summary: pd.DataFrame, comparisons: pd.DataFrame | None) -> list[str]:
    """Ratios whose two sides never ran on one machine: named, with why, never computed."""
    out = []
    if "speedup_verdict" in summary.columns:
        for _, row in summary[summary["speedup_verdict"] == NOT_FORMED].iterrows():
            kind = KINDS[row["study"]]
            out.append(
                f"{kind.name} {kind.describe(row)} on {row['machine_name']}: no speedup over "
                f"{row['baseline']} formed: {row['speedup_not_formed']}."
            )
    if comparisons is not None and "verdict" in comparisons.columns:
        for _, row in comparisons[comparisons["verdict"] == NOT_FORMED].iterrows():
            out.append(
                f"{row['subject']} against {row['reference']} ({row['study']} at "
                f"{row['family']}): not formed: {row['not_formed']}."
            )
    return out


def _speedup_sentence(row: pd.Series, who: str, over: str) -> str:
    speedup = _ratio(row, "speedup")
    ratio = speedup.text()
    efficiency = _ratio(row, "efficiency").text("{:.0f}", "%", scale=100.0)
    base = f"{over} at {row['baseline_rate']:,.0f} {row['rate_unit']}"
    direction = speedup.direction("faster than", "slower than")
    if direction == "not resolved":
        return (
            f"{who}: not resolved on this machine against {base}: {ratio}, an interval that "
            f"admits both a gain and a loss (efficiency {efficiency}).{_flag_note(row)}"
        )
    return (
        f"{who}: {ratio} {direction} {base} (efficiency {efficiency}, "
        f"{int(row['blocks'])} paired blocks).{_flag_note(row)}"
    )


def _train_findings(train: pd.DataFrame) -> list[str]:
    out = []
    tiny = train[train["model"] == "tinycnn"]
    for (filters, batch), fam in tiny.groupby(["filters", "batch_size"], sort=True):
        where = f"F={plain_number(filters)}, B={plain_number(batch)}"
        for _, row in fam[(fam["parallelism_requested"] > 1) & fam["speedup"].notna()].iterrows():
            who = f"{row['engine']} {_threads(row['parallelism'])} ({where})"
            out.append(_speedup_sentence(row, who, f"{row['engine']} 1 thread"))
        warm = fam[fam["warmup_s"].notna()].groupby("engine")["warmup_s"].median()
        if len(warm):
            out.append(
                f"Warm-up before the clock at {where} (compilation, first steps; median over "
                "blocks): " + ", ".join(f"{e} {w:.2f} s" for e, w in warm.items()) + "."
            )
        accs = fam.groupby("engine")["accuracy"].median().dropna()
        if len(accs):
            out.append(
                f"Final test accuracy of the full-length runs at {where}: "
                + ", ".join(f"{e} {100 * a:.1f}%" for e, a in accs.items())
                + "."
            )
    for _, row in train[train["model"] == "mosaicnet"].iterrows():
        out.append(
            f"MosaicNet training ({row['engine']}): {row['rate']:,.0f} images/s, "
            f"test accuracy {100 * row['accuracy']:.2f}%."
        )
    return out


def _comparison_findings(comparisons: pd.DataFrame) -> list[str]:
    out = []
    if "verdict" in comparisons.columns:
        comparisons = comparisons[comparisons["verdict"] != NOT_FORMED]
    for _, row in comparisons.iterrows():
        interval = _ratio(row, "ratio")
        ratio = interval.text()
        where = f"{row['study']} at {row['family']}"
        direction = interval.direction("faster than", "slower than")
        note = _flag_note(row)
        if direction == "not resolved":
            out.append(
                f"{row['subject']} against {row['reference']} ({where}): not resolved on this "
                f"machine, {ratio}.{note}"
            )
        else:
            out.append(
                f"{row['subject']} is {ratio} {direction} {row['reference']} ({where}; "
                f"{row['subject_rate']:,.0f} against {row['reference_rate']:,.0f} "
                f"{row['rate_unit']}).{note}"
            )
    return out


def _classify_findings(classify: pd.DataFrame) -> list[str]:
    if classify.empty:
        return []
    out = []
    largest = classify[classify["cells"] == classify["cells"].max()]
    parallel = largest[(largest["mode"] != "sequential") & largest["speedup"].notna()]
    for _, row in parallel.sort_values(["mode", "parallelism"]).iterrows():
        who = f"{row['mode']} {_workers(row['parallelism'])} on {row['grid']}"
        who += f" (B={plain_number(row['batch_size'])})"
        out.append(_speedup_sentence(row, who, "sequential"))
    # What users pay: end to end, and the mosaic size from which start-up is paid back.
    for _, row in classify[classify["mode"] == "processes"].sort_values("cells").iterrows():
        if pd.isna(row["end_to_end_speedup"]):
            continue
        e2e = _ratio(row, "end_to_end_speedup").text()
        payback = row["payback_cells"]
        if pd.isna(payback):
            pays = ""
        elif payback == float("inf"):
            pays = "; its start-up is never paid back at this speed"
        else:
            pays = (
                f"; start-up is paid back from about {payback:,.0f} cells (median over blocks, "
                f"range {row['payback_cells_min']:,.0f}–{row['payback_cells_max']:,.0f})"
            )
        out.append(
            f"End to end (start-up {row['startup_s']:.2f} s included), processes "
            f"{_workers(row['parallelism'])} on {row['grid']}: {e2e} against sequential"
            f"{pays}.{_flag_note(row)}"
        )
    best = largest.loc[largest["rate"].idxmax()]
    out.append(
        f"Fastest steady-state classification of the largest mosaic ({best['grid']}, "
        f"{int(best['cells']):,} cells): {best['mode']} {_workers(best['parallelism'])}, "
        f"B={plain_number(best['batch_size'])}, at {best['rate']:,.0f} cells/s "
        f"[{best['rate_low']:,.0f}, {best['rate_high']:,.0f}]; accuracy "
        f"{100 * best['accuracy']:.2f}%."
    )
    return out


def _roofline_findings(roof: pd.DataFrame) -> list[str]:
    if roof.empty:
        return []
    best = roof.loc[roof["roofline_fraction"].idxmax()]
    kind = KINDS[best["study"]]
    who = best[kind.subject]
    par = kind.parallelism_text(best["parallelism"])
    share = _ratio(best, "roofline_fraction").text("{:.0f}", "%", scale=100.0)
    return [
        f"Highest fraction of the roofline: {best['study']} {best['model']} {who} with {par}, "
        f"{best['gflops']:.1f} GFLOP/s = {share} of its own matmul probe "
        f"({best['roofline_gflops']:.1f} GFLOP/s, {best['roofline_device']}).{_flag_note(best)}"
    ]


def _capped_findings(summary: pd.DataFrame) -> list[str]:
    capped = summary[summary["parallelism"] < summary["parallelism_requested"]]
    return [
        f"Note: {row['study']} {row[KINDS[row['study']].subject]} "
        f"asked for {plain_number(row['parallelism_requested'])} threads/workers but ran with "
        f"{plain_number(row['parallelism'])} (Snakemake caps a job's threads at --cores); its "
        "efficiency uses the effective count."
        for _, row in capped.iterrows()
    ]


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
     "configured limits. Blocks run in order and a block's comparison family runs back to "
     "back, so the jobs compared ran seconds apart; an engine that switches threads in one "
     "process (numba, torch) trains every thread count of a block in one job, the counts taking "
     "turns in 0.1-second windows, so its speedup compares windows a fraction of a second apart."),
    ("11. Upper bounds",
     "each job's roofline is its own float32 matmul probe at its own thread count (GPU jobs: "
     "on their GPU); the speedup figures draw ideal linear scaling."),
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
    items = "\n".join(
        f"<li>{html.escape(s)}</li>" for s in findings(summary, tables.get("comparisons"))
    )
    machines = tables.get("machines", pd.DataFrame())
    machine_items = "\n".join(f"<li>{html.escape(s)}</li>" for s in machine_findings(machines))
    return template.substitute(
        title=html.escape(title),
        meta=html.escape(meta),
        banner=banner_html(tables.get("jobs", pd.DataFrame())) + not_as_named_html(tables),
        findings=items,
        method=method_html(),
        figures=figures_html(figures),
        machine_findings=machine_items,
        machine_figures=figures_html(figures, "machines"),
        machines_table=table_html(_fmt_machines(machines)) if not machines.empty else "",
        summary_table=table_html(_fmt_summary(summary)) if not summary.empty else "",
        train_rows=len(tables["train"]),
        classify_rows=len(tables["classify"]),
        train_table=table_html(tables["train"], TRAIN_COLUMNS),
        classify_table=table_html(tables["classify"], CLASSIFY_COLUMNS),
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
    for name in ("train", "classify"):
        frame = tables.get(name, pd.DataFrame())
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
