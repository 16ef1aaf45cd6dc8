"""The study report: one self-contained HTML file built from the tables and the figures.

Figures are embedded as base64 PNGs and the page has no external resources, so the file can
be mailed or opened offline. The findings are sentences generated from ``summary.csv``
(ratios of numbers already in the table; nothing is re-measured or re-aggregated here).
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import json
import logging
import os
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any

import pandas as pd

from cnnpar.io import write_text
from cnnpar.registry import FIGURES
from cnnpar.study.tables import read_table

log = logging.getLogger(__name__)

# Columns of the tidy tables shown in the page (the CSVs hold all of them).
TRAIN_COLUMNS = [
    "model", "engine", "threads_requested", "threads", "filters", "batch_size", "seed",
    "epoch", "seconds", "cum_seconds", "images_per_s", "train_loss", "train_acc",
    "test_loss", "test_acc",
]  # fmt: skip
CLASSIFY_COLUMNS = [
    "mode", "workers_requested", "workers", "grid", "cells", "distinct_digits", "batch_size",
    "seed", "repeat", "startup_s", "classify_s", "total_s", "cells_per_s", "accuracy",
]  # fmt: skip


# --- findings -----------------------------------------------------------------------------


def _n(value: Any) -> str:
    """A parameter value for prose: 8.0 -> '8'."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _threads(n: Any) -> str:
    return f"{_n(n)} thread{'s' if float(n) != 1 else ''}"


def _workers(n: Any) -> str:
    return f"{_n(n)} worker{'s' if float(n) != 1 else ''}"


def findings(summary: pd.DataFrame) -> list[str]:
    """Plain sentences stating what the summary table shows."""
    if summary.empty:
        return ["No results: the summary table is empty."]
    return [
        *_train_findings(summary[summary["study"] == "train"]),
        *_classify_findings(summary[summary["study"] == "classify"]),
        *_roofline_findings(summary[summary["roofline_fraction"].notna()]),
        *_capped_findings(summary),
    ]


def _train_findings(train: pd.DataFrame) -> list[str]:
    out = []
    tiny = train[train["model"] == "tinycnn"]
    for (filters, batch), fam in tiny.groupby(["filters", "batch_size"], sort=True):
        where = f"F={_n(filters)}, B={_n(batch)}"
        # Each engine at the largest thread count it ran: its scaling, then engine vs engine.
        tops = fam.loc[fam.groupby("engine")["parallelism"].idxmax()]
        tops = tops.sort_values("rate_median", ascending=False)
        for _, row in tops[(tops["parallelism"] > 1) & tops["speedup"].notna()].iterrows():
            out.append(
                f"{row['engine']} {_threads(row['parallelism'])} ({where}): "
                f"{row['speedup']:.2f}× over 1 thread ({100 * row['efficiency']:.0f}% efficiency)."
            )
        if len(tops) > 1:
            best = tops.iloc[0]
            others = ", ".join(
                f"{best['rate_median'] / row['rate_median']:.1f}× {row['engine']}"
                f" ({_threads(row['parallelism'])})"
                for _, row in tops.iloc[1:].iterrows()
            )
            out.append(
                f"Fastest training at {where}: {best['engine']} {_threads(best['parallelism'])} "
                f"at {best['rate_median']:,.0f} images/s, {others}."
            )
        accs = [
            f"{row['engine']} {100 * row['accuracy']:.1f}%"
            for _, row in tops.sort_values("engine").iterrows()
            if pd.notna(row["accuracy"])
        ]
        if accs:
            out.append(f"Final test accuracy at {where} (median over seeds): {', '.join(accs)}.")
    for _, row in train[train["model"] == "mosaicnet"].iterrows():
        out.append(
            f"MosaicNet training ({row['engine']}): {row['rate_median']:,.0f} images/s, "
            f"test accuracy {100 * row['accuracy']:.2f}%."
        )
    return out


def _classify_findings(classify: pd.DataFrame) -> list[str]:
    if classify.empty:
        return []
    out = []
    # Each parallel mode at its most workers on the largest grid, against sequential.
    largest = classify[classify["cells"] == classify["cells"].max()]
    parallel = largest[(largest["mode"] != "sequential") & largest["speedup"].notna()]
    if not parallel.empty:
        tops = parallel.loc[parallel.groupby(["mode", "batch_size"])["parallelism"].idxmax()]
        for _, row in tops.sort_values("speedup", ascending=False).iterrows():
            out.append(
                f"{row['mode']} {_workers(row['parallelism'])} on {row['grid']} "
                f"(B={_n(row['batch_size'])}): {row['speedup']:.2f}× over sequential "
                f"({100 * row['efficiency']:.0f}% efficiency)."
            )
    best = largest.loc[largest["rate_median"].idxmax()]
    out.append(
        f"Fastest classification of the largest mosaic ({best['grid']}, "
        f"{int(best['cells']):,} cells): {best['mode']} {_workers(best['parallelism'])}, "
        f"B={_n(best['batch_size'])}, at {best['rate_median']:,.0f} cells/s; "
        f"accuracy {100 * best['accuracy']:.2f}%."
    )
    # How the cost per cell changes with the grid, for one line (sequential if it ran).
    first_mode = "sequential" if "sequential" in set(classify["mode"]) else classify["mode"].iloc[0]
    line = classify[classify["mode"] == first_mode]
    line = line[line["batch_size"] == line["batch_size"].iloc[0]]
    line = line[line["parallelism"] == line["parallelism"].iloc[0]]
    if line["cells"].nunique() > 1:
        small = line.loc[line["cells"].idxmin()]
        big = line.loc[line["cells"].idxmax()]
        ratio = big["seconds_per_item"] / small["seconds_per_item"]
        out.append(
            f"Cost per cell, {first_mode} {_workers(small['parallelism'])} "
            f"(B={_n(small['batch_size'])}): {1e6 * small['seconds_per_item']:.1f} µs at "
            f"{int(small['cells']):,} cells, {1e6 * big['seconds_per_item']:.1f} µs at "
            f"{int(big['cells']):,} cells ({ratio:.2f}×)."
        )
    return out


def _roofline_findings(roof: pd.DataFrame) -> list[str]:
    if roof.empty:
        return []
    best = roof.loc[roof["roofline_fraction"].idxmax()]
    train_row = best["study"] == "train"
    who = best["engine"] if train_row else best["mode"]
    par = (_threads if train_row else _workers)(best["parallelism"])
    out = [
        f"Highest fraction of the sgemm roofline: {best['study']} {best['model']} {who} "
        f"with {par}, {best['gflops']:.1f} GFLOP/s = "
        f"{100 * best['roofline_fraction']:.0f}% of {best['roofline_gflops']:.1f} GFLOP/s."
    ]
    above = roof[roof["roofline_fraction"] > 1.0]
    if not above.empty:
        out.append(
            f"Note: {len(above)} configuration(s) exceed the measured sgemm rate, so that "
            "measurement was probably slowed by other load on the machine; re-measure the "
            "roofline (`cnnpar info --threads N`) on a quiet machine."
        )
    return out


def _capped_findings(summary: pd.DataFrame) -> list[str]:
    capped = summary[summary["parallelism"] < summary["parallelism_requested"]]
    return [
        f"Note: {row['study']} {row['engine'] if row['study'] == 'train' else row['mode']} "
        f"asked for {_n(row['parallelism_requested'])} threads/workers but ran with "
        f"{_n(row['parallelism'])} (Snakemake caps a job's threads at --cores); its "
        "efficiency uses the effective count."
        for _, row in capped.iterrows()
    ]


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


def figures_html(figures: Sequence[str | os.PathLike[str]]) -> str:
    order = list(FIGURES)
    blocks = []
    for path in sorted(
        figures, key=lambda p: order.index(Path(p).stem) if Path(p).stem in order else len(order)
    ):
        stem = Path(path).stem
        figure = FIGURES.get(stem)
        title = figure.title if figure else stem
        css = "figure mask" if stem == "mask" else "figure"
        blocks.append(
            f'<figure class="{css}" id="fig-{html.escape(stem)}">'
            f"<h3>{html.escape(title)}</h3>{_img(path, title)}"
            f"<figcaption>{html.escape(figure.caption if figure else '')}</figcaption></figure>"
        )
    return "\n".join(blocks)


def _fmt_summary(summary: pd.DataFrame) -> pd.DataFrame:
    """The summary as people read it: units, ×, %, no NaN noise."""

    def fmt(value: Any, pattern: str) -> str:
        return "" if pd.isna(value) else pattern.format(value)

    rows = []
    for _, r in summary.iterrows():
        who = r["engine"] if r["study"] == "train" else r["mode"]
        config = (
            f"F={_n(r['filters'])} B={_n(r['batch_size'])}"
            if r["model"] == "tinycnn"
            else (f"{r['grid']} B={_n(r['batch_size'])}" if r["study"] == "classify" else "")
        )
        par = _n(r["parallelism"])
        if r["parallelism"] != r["parallelism_requested"]:
            par += f" (asked {_n(r['parallelism_requested'])})"
        rows.append(
            {
                "study": f"{r['study']} {r['model']}",
                "engine / mode": who,
                "config": config,
                "threads / workers": par,
                "rate (median)": f"{r['rate_median']:,.0f} {r['rate_unit']}",
                "IQR": fmt(r["rate_iqr"], "{:,.0f}"),
                "speedup": fmt(r["speedup"], "{:.2f}×"),
                "efficiency": fmt(r["efficiency"], "{:.0%}"),
                "accuracy": fmt(r["accuracy"], "{:.2%}"),
                "GFLOP/s": fmt(r["gflops"], "{:.1f}"),
                "% roofline": fmt(r["roofline_fraction"], "{:.0%}"),
                "n": int(r["samples"]),
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
    train: pd.DataFrame,
    classify: pd.DataFrame,
    summary: pd.DataFrame,
    figures: Sequence[str | os.PathLike[str]],
    env: dict[str, Any],
    config_yaml: str,
) -> str:
    template = Template(
        resources.files("cnnpar").joinpath("templates/report.html").read_text(encoding="utf-8")
    )
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    meta = (
        f"Generated {now} on {env.get('hostname', '?')}: {env.get('cpu_model', '?')}, "
        f"{env.get('logical_cores', '?')} logical cores, {env.get('ram_gib', '?')} GiB; "
        f"cnnpar {env.get('cnnpar', '?')} at git {env.get('git_revision', '?')}."
    )
    items = "\n".join(f"<li>{html.escape(s)}</li>" for s in findings(summary))
    return template.substitute(
        title=html.escape(title),
        meta=html.escape(meta),
        findings=items,
        figures=figures_html(figures),
        summary_table=table_html(_fmt_summary(summary)) if not summary.empty else "",
        train_rows=len(train),
        classify_rows=len(classify),
        train_table=table_html(train, TRAIN_COLUMNS),
        classify_table=table_html(classify, CLASSIFY_COLUMNS),
        config=html.escape(config_yaml),
        environment=env_html(env),
    )


def write_report(
    out: str | os.PathLike[str],
    title: str,
    train_csv: str | os.PathLike[str],
    classify_csv: str | os.PathLike[str],
    summary_csv: str | os.PathLike[str],
    figures: Sequence[str | os.PathLike[str]],
    env_json: str | os.PathLike[str],
    config_yaml: str,
) -> Path:
    """Render the report from files and write it atomically; returns its path."""
    env = json.loads(Path(env_json).read_text())
    page = render(
        title,
        read_table(train_csv),
        read_table(classify_csv),
        read_table(summary_csv),
        figures,
        env,
        config_yaml,
    )
    write_text(out, page)
    log.info("report written to %s (%d bytes)", out, len(page))
    return Path(out)
