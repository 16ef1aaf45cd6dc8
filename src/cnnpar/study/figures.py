"""Figures drawn only from the tidy tables (never from job outputs or models).

`draw_all` writes one PNG (for the HTML report) and one SVG (for papers) for every figure of
`registry.table_figures()`; the maker of figure `id` is the function `id` here, called with the
tables the registry says it reads. A table with nothing to plot gives a figure that says so, so
the file set never changes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never a display

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from cnnpar.io import atomic_path
from cnnpar.registry import table_figures
from cnnpar.study.kinds import KINDS, StudyKind, figure_text, plain_number
from cnnpar.study.tables import TABLE_SCHEMAS, read_table

log = logging.getLogger(__name__)

# One colour per engine / mode across every figure, so a reader learns them once.
COLORS = {
    "numpy": "#7f7f7f",
    "numba": "#1f77b4",
    "cuda": "#2ca02c",
    "torch": "#d62728",
    "torch-cuda": "#ff7f0e",
    "torch-ddp": "#9467bd",
    "sequential": "#7f7f7f",
    "threads": "#1f77b4",
    "processes": "#d62728",
    "ranks": "#9467bd",
}
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
# Figures place and group configurations by the parallelism they asked for: two configurations
# whose jobs ran with fewer CPUs than asked (`parallelism`) stay two points, not one.
PAR = "parallelism_requested"
# The kinds whose own figures these are; figures over every kind loop over KINDS.
TRAIN, CLASSIFY = KINDS["train"], KINDS["classify"]

plt.rcParams.update(
    {
        "figure.dpi": 110,
        "savefig.dpi": 110,
        "font.size": 10,
        "axes.titlesize": 11,
        "axes.grid": True,
        "grid.alpha": 0.3,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "legend.fontsize": 8,
        "legend.frameon": False,
        "svg.fonttype": "none",  # keep text as text in the SVG
    }
)


def _no_data(ax: Axes, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what} in this run", ha="center", va="center", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)


def _label(row: pd.Series, keys: list[str]) -> str:
    names = {"filters": "F", "batch_size": "B", "grid": "", PAR: "×"}
    parts = []
    for key in keys:
        value = row[key]
        if pd.isna(value):
            continue
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        parts.append(f"{names.get(key, '')}{value}" if key in names else str(value))
    return " ".join(parts)


def _plain_log(ax: Axes, axis: str) -> None:
    """Log scale with tick labels as plain numbers (200, not 2×10²)."""
    fmt = FuncFormatter(lambda v, _: f"{v:,.6g}")
    target = ax.xaxis if axis == "x" else ax.yaxis
    (ax.set_xscale if axis == "x" else ax.set_yscale)("log")
    target.set_major_formatter(fmt)
    low, high = ax.get_xlim() if axis == "x" else ax.get_ylim()
    # Under ~1.5 decades there are too few major ticks to read values: label the minor ones.
    minor = fmt if high / max(low, 1e-300) < 30 else FuncFormatter(lambda v, _: "")
    target.set_minor_formatter(minor)


def _interval_err(frame: pd.DataFrame, name: str, scale: float = 1.0) -> np.ndarray:
    """Asymmetric error bars (2, n) from the `name`, `name`_low and `name`_high columns; a
    missing interval (one block) draws no bar."""
    mid = scale * frame[name].to_numpy(dtype=float)
    low = scale * frame[f"{name}_low"].to_numpy(dtype=float)
    high = scale * frame[f"{name}_high"].to_numpy(dtype=float)
    return np.nan_to_num(np.clip(np.vstack([mid - low, high - mid]), 0, None))


def _varying(frame: pd.DataFrame, keys: list[str]) -> list[str]:
    """The keys that take more than one value (only those are worth a legend entry); the
    machine always counts, so a study over several machines draws one line per machine."""
    keys = [*keys, "machine_name"]
    return [k for k in keys if k in frame.columns and frame[k].nunique(dropna=True) > 1]


# --- speedup and efficiency ---------------------------------------------------------------


def _speedup_panels(
    summary: pd.DataFrame, color_key: str, extra_keys: list[str], xlabel: str, what: str
) -> Figure:
    fig, (ax_s, ax_e) = plt.subplots(1, 2, figsize=(11, 4.2))
    data = summary[summary["speedup"].notna()]
    if data.empty:
        _no_data(ax_s, what)
        _no_data(ax_e, what)
        return fig
    varying = _varying(data, extra_keys)
    families = data.groupby([color_key, *varying], dropna=False, sort=True)
    for i, (_, fam) in enumerate(families):
        if (fam[PAR] == 1).all():
            continue  # a 1-thread-only family (numpy) is its own baseline: nothing to show
        fam = fam.sort_values(PAR)
        first = fam.iloc[0]
        color = COLORS.get(first[color_key], f"C{i % 10}")
        label = _label(first, [color_key, *varying])
        x = fam[PAR].to_numpy(dtype=float)
        speed = fam["speedup"].to_numpy(dtype=float)
        marker = MARKERS[i % len(MARKERS)]
        ax_s.errorbar(
            x, speed, yerr=_interval_err(fam, "speedup"), color=color, marker=marker, capsize=3,
            label=label,
        )  # fmt: skip
        ax_e.errorbar(
            x, 100 * fam["efficiency"], yerr=_interval_err(fam, "efficiency", 100.0),
            color=color, marker=marker, capsize=3, label=label,
        )  # fmt: skip
    xmax = float(data[PAR].max())
    ideal = np.array([1.0, max(xmax, 2.0)])
    ax_s.plot(ideal, ideal, "k--", lw=1, label="ideal (linear)")
    ax_e.axhline(100, color="k", ls="--", lw=1, label="ideal (100%)")
    ticks = sorted({1, *(int(v) for v in data[PAR].unique())})
    for ax in (ax_s, ax_e):
        ax.set_xlabel(xlabel)
        if max(ticks) >= 8:  # 1, 2, 4, 8: evenly spaced on a log2 axis
            ax.set_xscale("log", base=2)
            ax.set_xlim(0.85, max(ticks) * 1.15)
        else:
            ax.set_xlim(0.8, max(ticks) + 0.2 * max(ticks) ** 0.5)
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    ax_s.set_ylabel("speedup (×)")
    ax_s.set_ylim(bottom=0)
    ax_e.set_ylabel("parallel efficiency (%)")
    ax_e.set_ylim(0, max(110, float(100 * data["efficiency_high"].max()) * 1.1))
    ax_s.legend(loc="upper left")
    ax_e.legend(loc="lower left")
    fig.tight_layout()
    return fig


def _tinycnn_training(summary: pd.DataFrame) -> pd.DataFrame:
    train = TRAIN.rows(summary)
    return train[train["model"] == "tinycnn"]


def train_speedup(summary: pd.DataFrame) -> Figure:
    train = _tinycnn_training(summary)
    fig = _speedup_panels(
        train, TRAIN.subject, list(TRAIN.legend_keys), "threads", "multi-thread training"
    )
    fig.suptitle("TinyCNN training: speedup over 1 thread", y=1.02)
    return fig


def classify_speedup(summary: pd.DataFrame) -> Figure:
    # Sequential is the baseline itself (speedup 1 at 1 worker by definition): no line.
    classify = CLASSIFY.rows(summary)
    classify = classify[classify[CLASSIFY.subject] != CLASSIFY.baseline_subject]
    fig = _speedup_panels(
        classify, CLASSIFY.subject, list(CLASSIFY.legend_keys), "workers", "parallel classification"
    )
    fig.suptitle("Mosaic classification: speedup over sequential", y=1.02)
    return fig


# --- throughput ---------------------------------------------------------------------------


def train_throughput(summary: pd.DataFrame) -> Figure:
    """Grouped bars: engines along x, one bar per thread count, 95% interval error bars."""
    train = _tinycnn_training(summary)
    keys = ["filters", "batch_size", *_varying(train, [])]
    families = list(train.groupby(keys, sort=True)) if not train.empty else []
    ncols = min(2, max(1, len(families)))
    nrows = max(1, -(-len(families) // ncols))
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(6.0 * ncols if ncols > 1 else 7.0, 4.2 * nrows), squeeze=False
    )
    if not families:
        _no_data(axes[0, 0], "tinycnn training")
        return fig
    for ax in axes.flat[len(families) :]:
        ax.set_visible(False)
    for ax, ((filters, batch, *machine), fam) in zip(axes.flat, families, strict=False):
        engines = list(dict.fromkeys(fam.sort_values("rate")["engine"]))
        threads = sorted(fam[PAR].unique())
        width = 0.8 / len(threads)
        for j, t in enumerate(threads):
            rows = fam[fam[PAR] == t].set_index("engine").reindex(engines)
            x = np.arange(len(engines)) + (j - (len(threads) - 1) / 2) * width
            med = rows["rate"].to_numpy(dtype=float)
            ax.bar(
                x,
                med,
                width,
                yerr=_interval_err(rows, "rate"),
                capsize=3,
                color=[COLORS.get(e, "C0") for e in engines],
                alpha=0.45 + 0.55 * (j + 1) / len(threads),
                edgecolor="black",
                linewidth=0.5,
                label=f"{int(t)} thread{'s' if t > 1 else ''}",
            )
            for xi, m in zip(x, med, strict=True):
                if np.isfinite(m):
                    ax.annotate(
                        f"{m:,.0f}", (xi, m), ha="center", va="bottom", fontsize=7,
                        xytext=(0, 2), textcoords="offset points",
                    )  # fmt: skip
        ax.set_xticks(np.arange(len(engines)))
        ax.set_xticklabels(engines)
        ax.set_ylabel("training throughput (images/s)")
        ax.set_title(" ".join([f"F={int(filters)}, B={int(batch)}", *map(str, machine)]))
        rates = fam["rate"].dropna()
        if len(rates) and rates.max() / max(rates.min(), 1e-9) > 30:
            _plain_log(ax, "y")
        ax.legend(title="shade = threads", loc="upper left")
    fig.suptitle("TinyCNN training throughput", y=1.02)
    fig.tight_layout()
    return fig


# --- time to accuracy ---------------------------------------------------------------------


def time_to_accuracy(train: pd.DataFrame) -> Figure:
    """Test accuracy after each epoch of the full-length runs against the seconds a user waits:
    warm-up (compilation) plus cumulative training time, median over seeds."""
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    data = train[train["model"] == "tinycnn"] if "model" in train.columns else train
    if "run" in data.columns and (data["run"] == "full").any():
        data = data[data["run"] == "full"]
    if data.empty:
        _no_data(ax, "tinycnn training")
        return fig
    first_family = data.sort_values(["filters", "batch_size"]).iloc[0]
    data = data[
        (data["filters"] == first_family["filters"])
        & (data["batch_size"] == first_family["batch_size"])
    ]
    x_column = "cum_seconds_with_warmup" if "cum_seconds_with_warmup" in data else "cum_seconds"
    for i, (engine, eng) in enumerate(data.groupby("engine", sort=True)):
        eng = eng[eng[PAR] == eng[PAR].max()]
        curve = eng.groupby("epoch")[[x_column, "test_acc"]].median().reset_index()
        threads = int(eng[PAR].max())
        ax.plot(
            curve[x_column],
            100 * curve["test_acc"],
            marker=MARKERS[i % len(MARKERS)],
            color=COLORS.get(engine, f"C{i}"),
            label=f"{engine} ({threads} thread{'s' if threads > 1 else ''})",
        )
    _plain_log(ax, "x")
    ax.set_xlabel("warm-up + cumulative training time (s, log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(
        f"TinyCNN time to accuracy (F={int(first_family['filters'])}, "
        f"B={int(first_family['batch_size'])}; one marker per epoch)"
    )
    ax.legend(loc="best")
    fig.tight_layout()
    return fig


# --- classification cost ------------------------------------------------------------------


def _grid_axis(ax: Axes, data: pd.DataFrame) -> None:
    """A log x axis of mosaic sizes, one tick per grid: '50x50' over its cell count."""
    _plain_log(ax, "x")
    grids = data.drop_duplicates("cells").sort_values("cells")
    labels = [f"{g}\n{int(c):,}" for g, c in zip(grids["grid"], grids["cells"], strict=True)]
    ax.set_xticks(grids["cells"], labels)
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    ax.set_xlabel("mosaic grid and cells (log scale)")


def _classify_lines(data: pd.DataFrame) -> Iterator[tuple[int, pd.DataFrame, str, str]]:
    """One line per mode × workers (× batch size where it varies), sorted by mosaic size: its
    index (for the marker), rows, legend label and colour."""
    varying = _varying(data, ["batch_size"])
    for i, (_, line) in enumerate(data.groupby(["mode", PAR, *varying], sort=True)):
        first = line.iloc[0]
        label = _label(first, ["mode", PAR, *varying])
        yield i, line.sort_values("cells"), label, COLORS.get(first["mode"], f"C{i}")


def classify_cost_per_cell(summary: pd.DataFrame) -> Figure:
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    data = CLASSIFY.rows(summary)
    if data.empty:
        _no_data(ax, "classification")
        return fig
    for i, line, label, color in _classify_lines(data):
        ax.plot(
            line["cells"],
            1e6 * line["seconds_per_item"],
            marker=MARKERS[i % len(MARKERS)],
            color=color,
            alpha=0.5 + 0.5 * line[PAR].iloc[0] / data[PAR].max(),
            label=label,
        )
    _plain_log(ax, "y")
    _grid_axis(ax, data)
    ax.set_ylabel("classification time per cell (µs, log scale)")
    ax.set_title("Mosaic classification cost per cell")
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), title="mode × workers")
    fig.tight_layout()
    return fig


def classify_end_to_end(summary: pd.DataFrame) -> Figure:
    """Steady-state against end-to-end cells/s (start-up included) over the mosaic size."""
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    data = CLASSIFY.rows(summary)
    if data.empty:
        _no_data(ax, "classification")
        return fig
    for i, line, label, color in _classify_lines(data):
        ax.errorbar(
            line["cells"], line["rate"], yerr=_interval_err(line, "rate"), color=color,
            marker=MARKERS[i % len(MARKERS)], capsize=3, label=f"{label} steady state",
        )  # fmt: skip
        ax.errorbar(
            line["cells"], line["end_to_end_rate"], yerr=_interval_err(line, "end_to_end_rate"),
            color=color, ls="--", marker=MARKERS[i % len(MARKERS)], mfc="none", capsize=3,
            label=f"{label} end to end",
        )  # fmt: skip
    _grid_axis(ax, data)
    ax.set_ylabel("cells/s")
    ax.set_ylim(bottom=0)
    ax.set_title("What users pay: steady-state against end-to-end throughput")
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=7)
    fig.tight_layout()
    return fig


# --- roofline -----------------------------------------------------------------------------

# One entry per distinct probe (machine and roofline device): its roofs, medians over the
# configurations probed at it.
ROOF_COLUMNS = ["roofline_gflops", "bandwidth_memory_gbs", "bandwidth_cache_gbs"]


def _roofs(data: pd.DataFrame) -> pd.DataFrame:
    """The distinct probes of `data`'s rows: machine, device and their median roofs."""
    keys = ["machine_name", "roofline_device"]
    frame = data.copy()
    for column in ROOF_COLUMNS:
        frame[column] = pd.to_numeric(frame.get(column), errors="coerce")
    roofs = frame.groupby(keys, dropna=False, sort=True)[ROOF_COLUMNS].median().reset_index()
    return roofs[roofs["roofline_gflops"].notna()]


def _roofline_panel(ax: Axes, data: pd.DataFrame, kind: StudyKind) -> None:
    """Points: achieved GFLOP/s at each configuration's arithmetic intensity, labelled; lines:
    each probe's compute roof with its memory (solid) and L2 (dashed) bandwidth slopes."""
    roofs = _roofs(data)
    intensity = data["arithmetic_intensity"].to_numpy(dtype=float)
    ridges = np.r_[
        roofs["roofline_gflops"] / roofs["bandwidth_memory_gbs"],
        roofs["roofline_gflops"] / roofs["bandwidth_cache_gbs"],
    ]
    ridges = ridges[np.isfinite(ridges) & (ridges > 0)]
    span = np.r_[intensity, ridges]
    x = np.geomspace(span.min() / 3, span.max() * 3, 256)
    several = len(roofs) > 1
    for i, roof in enumerate(roofs.to_dict("records")):
        color = str(0.15 + 0.55 * i / max(1, len(roofs) - 1)) if several else "0.25"
        peak = roof["roofline_gflops"]
        name = roof["roofline_device"]
        if data["machine_name"].nunique() > 1:
            name = f"{roof['machine_name']} {name}"
        label = f"{name}: {figure_text(peak)} GFLOP/s"
        memory, cache = roof["bandwidth_memory_gbs"], roof["bandwidth_cache_gbs"]
        if np.isfinite(memory):
            label += f", {figure_text(memory)} GB/s memory"
        if np.isfinite(cache):
            label += f", {figure_text(cache)} GB/s L2"
        memory_line = np.minimum(peak, x * memory) if np.isfinite(memory) else np.full_like(x, peak)
        ax.plot(x, memory_line, color=color, lw=1.5, label=label)
        if np.isfinite(cache):
            ax.plot(x, np.minimum(peak, x * cache), color=color, lw=1.2, ls="--")
    rows = data.sort_values([kind.subject, PAR])
    texts = {
        name: kind.layout_text(row[kind.subject], row[PAR], row.get("ranks"))
        for name, row in rows.iterrows()
    }
    # Name the workload too where one layout appears twice (grids, filters, batch sizes).
    several = pd.Series(texts).duplicated(keep=False) | (rows["arithmetic_intensity"].nunique() > 1)
    labels = []
    for i, (_, group) in enumerate(rows.groupby(PAR, sort=True)):
        for name, row in group.iterrows():
            color = COLORS.get(row[kind.subject], f"C{i % 10}")
            one = group.loc[[name]]
            err = _interval_err(one, "gflops") if "gflops_low" in one else None
            ax.errorbar(
                [row["arithmetic_intensity"]], [row["gflops"]], yerr=err, capsize=3,
                marker=MARKERS[i % len(MARKERS)], color=color, ls="none",
            )  # fmt: skip
            text = texts[name]
            if several[name]:
                text += " " + " ".join(kind.setting(row))
            labels.append((float(row["arithmetic_intensity"]), float(row["gflops"]), text, color))
    _plain_log(ax, "x")
    _plain_log(ax, "y")
    _spread_labels(ax, labels)
    ax.set_xlabel("arithmetic intensity (FLOPs per compulsory byte, log scale)")
    ax.set_ylabel("GFLOP/s (log scale)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), fontsize=7, title="roofs")


LABEL_GAP = 0.045  # axes heights between two labels of points at one intensity


def _spread_labels(ax: Axes, labels: list[tuple[float, float, str, str]]) -> None:
    """Label points (x, y, text, color) of a log-log panel on the side with room; labels of
    points at one x moved apart vertically (in axes fractions, so the layout does not undo it),
    each tied to its point by a thin line."""
    x0, x1 = np.log10(ax.get_xlim())
    y0, y1 = np.log10(ax.get_ylim())
    for x in sorted({lx for lx, _, _, _ in labels}):
        column = sorted((ly, t, c) for lx, ly, t, c in labels if lx == x)
        placed: list[float] = []
        for y, _, _ in column:  # bottom to top, each at least LABEL_GAP above the last
            want = (np.log10(y) - y0) / (y1 - y0)
            placed.append(want if not placed else max(want, placed[-1] + LABEL_GAP))
        shift = max(0.0, placed[-1] - 0.97) if placed else 0.0  # keep the top one inside
        fx = (np.log10(x) - x0) / (x1 - x0)
        right = fx < 0.5  # labels on the side with room
        for (y, text, color), fy in zip(column, placed, strict=True):
            ax.annotate(
                text, (x, y), xytext=(fx + (0.03 if right else -0.03), fy - shift),
                textcoords="axes fraction", fontsize=7, color=color,
                ha="left" if right else "right", va="center",
                bbox={"fc": "white", "ec": "none", "alpha": 0.8, "pad": 0.3},
                arrowprops={"arrowstyle": "-", "color": color, "lw": 0.5, "shrinkA": 0},
            )  # fmt: skip


def roofline(summary: pd.DataFrame) -> Figure:
    """The roofline of each kind (Williams, Waterman and Patterson, CACM 2009): achieved
    GFLOP/s against arithmetic intensity, log-log, one labelled point per engine or mode and
    parallelism with its 95% interval, under the roofs of every distinct probe (its matmul
    compute roof, and its memory and L2 triad bandwidth slopes)."""
    data = summary[summary["arithmetic_intensity"].notna() & summary["gflops"].notna()].copy()
    fig, axes = plt.subplots(1, len(KINDS), figsize=(6.0 * len(KINDS), 5.5), squeeze=False)
    for ax, kind in zip(axes.flat, KINDS.values(), strict=True):
        ax.set_title(kind.roofline_title)
        part = kind.rows(data).copy()
        if part.empty:
            _no_data(ax, f"{kind.name} roofline")
            continue
        # Another model than the kind's usual one is named beside its subject.
        usual = part["model"].mode().iloc[0]
        named = part["model"] + " (" + part[kind.subject] + ")"
        part[kind.subject] = np.where(part["model"] == usual, part[kind.subject], named)
        _roofline_panel(ax, part, kind)
    fig.suptitle(
        "Roofline: achieved GFLOP/s under each probe's compute and bandwidth roofs "
        "(solid: memory, dashed: L2)",
        y=1.02,
    )
    fig.tight_layout()
    return fig


# --- layouts at equal cores ----------------------------------------------------------------


def _equal_cores(rows: pd.DataFrame, who: str) -> tuple[pd.DataFrame, int] | None:
    """The rows at the core count to compare layouts at: the largest one a ranked layout ran
    at, else the largest with two layouts; None when no core count has two."""
    rows = rows.copy()
    rows["ranks"] = pd.to_numeric(rows.get("ranks", 1), errors="coerce").fillna(1).astype(int)
    counts = rows.groupby("parallelism_requested")[[who, "ranks"]].apply(
        lambda g: len(g.drop_duplicates())
    )
    candidates = [int(c) for c, n in counts.items() if n > 1]
    ranked = [
        c for c in candidates if (rows[rows["parallelism_requested"] == c]["ranks"] > 1).any()
    ]
    if not candidates:
        return None
    cores = max(ranked or candidates)
    return rows[rows["parallelism_requested"] == cores], cores


def _layout_bars(ax: Axes, rows: pd.DataFrame, kind: StudyKind, ylabel: str) -> None:
    """One bar per layout (rate, 95% interval); the hatched foot of a ranked layout's bar is
    its communication share of the step (all-reduce) or repeat (gather)."""
    who = kind.subject
    rows = rows.sort_values("rate").reset_index(drop=True)
    labels = [
        kind.layout_text(r[who], int(r["parallelism_requested"]), int(r["ranks"]))
        .replace(" x ", " ×\n")
        .replace(f"{r[who]} ", f"{r[who]}\n", 1)
        for _, r in rows.iterrows()
    ]
    x = np.arange(len(rows))
    rate = rows["rate"].to_numpy(dtype=float)
    ax.bar(
        x, rate, 0.6, yerr=_interval_err(rows, "rate"), capsize=3,
        color=[COLORS.get(n, "C0") for n in rows[who]], edgecolor="black", linewidth=0.5,
    )  # fmt: skip
    share = pd.to_numeric(rows.get("comm_share"), errors="coerce").to_numpy(dtype=float)
    for xi, r, c in zip(x, rate, share, strict=True):
        if np.isfinite(c):
            ax.bar(xi, r * c, 0.6, color="none", edgecolor="black", hatch="//", linewidth=0.5)
        text = f"{r:,.0f}" + (f"\ncomm {c:.0%}" if np.isfinite(c) else "")
        ax.annotate(text, (xi, r), ha="center", va="bottom", fontsize=7, xytext=(0, 2),
                    textcoords="offset points")  # fmt: skip
    ax.set_xticks(x)
    ax.set_xticklabels(labels, fontsize=8)
    ax.set_ylabel(ylabel)


def layouts(summary: pd.DataFrame) -> Figure:
    """Training (TinyCNN) and classification (the largest grid) at equal cores: every layout
    of those cores, ranks x threads (torch-ddp, mode ranks) beside one process of threads or
    processes, and each ranked layout's communication share."""
    fig, (ax_t, ax_c) = plt.subplots(1, 2, figsize=(11, 4.4))
    train = _tinycnn_training(summary)
    if not train.empty:  # the first width and batch size: the layouts, not the network, vary
        first = train.sort_values(["filters", "batch_size"]).iloc[0]
        train = train[
            (train["filters"] == first["filters"]) & (train["batch_size"] == first["batch_size"])
        ]
    picked = _equal_cores(train, TRAIN.subject) if not train.empty else None
    if picked is None:
        _no_data(ax_t, "two training layouts at equal cores")
    else:
        rows, cores = picked
        _layout_bars(ax_t, rows, TRAIN, "training throughput (images/s)")
        ax_t.set_title(f"TinyCNN training, {cores} cores ({TRAIN.family_text(first)})")
    cls = CLASSIFY.rows(summary)
    if not cls.empty:
        first = cls.sort_values(["cells", "batch_size"], ascending=[False, True]).iloc[0]
        cls = cls[(cls["cells"] == first["cells"]) & (cls["batch_size"] == first["batch_size"])]
    picked = _equal_cores(cls, CLASSIFY.subject) if not cls.empty else None
    if picked is None:
        _no_data(ax_c, "two classify layouts at equal cores")
    else:
        rows, cores = picked
        _layout_bars(ax_c, rows, CLASSIFY, "classification (cells/s)")
        ax_c.set_title(f"Classification, {cores} cores ({CLASSIFY.family_text(first)})")
    fig.suptitle("Layouts at equal cores (hatched: communication share)", y=1.02)
    fig.tight_layout()
    return fig


# --- machines side by side ------------------------------------------------------------------


def _machine_bars(machines: pd.DataFrame, value: str, scale: float, ylabel: str) -> Figure:
    """One panel per study kind: configurations along x, one bar per side (set and machine)
    with its 95% interval."""
    data = machines[machines[value].notna()]
    fig, axes = plt.subplots(1, len(KINDS), figsize=(12, 4.8), squeeze=False)
    sides = sorted(data["side"].unique()) if not data.empty else []
    for ax, kind in zip(axes.flat, KINDS.values(), strict=True):
        part = kind.rows(data)
        if part.empty:
            _no_data(ax, f"{kind.name} rows")
            continue
        configs = sorted(part["configuration"].unique())
        width = 0.8 / max(1, len(sides))
        for j, side in enumerate(sides):
            rows = part[part["side"] == side].drop_duplicates("configuration")
            rows = rows.set_index("configuration").reindex(configs)
            x = np.arange(len(configs)) + (j - (len(sides) - 1) / 2) * width
            ax.bar(
                x, scale * rows[value].to_numpy(dtype=float), width,
                yerr=_interval_err(rows, value, scale), capsize=2, color=f"C{j % 10}",
                edgecolor="black", linewidth=0.4, label=side,
            )  # fmt: skip
        labels = [c.removeprefix(f"{kind.name} ") for c in configs]
        ax.set_xticks(np.arange(len(configs)), labels, rotation=35, ha="right", fontsize=7)
        ax.set_ylabel(ylabel.format(unit=part["rate_unit"].iloc[0]))
        ax.set_title(kind.name)
        rates = part[value].dropna()
        if len(rates) and rates.max() / max(rates.min(), 1e-12) > 30:
            _plain_log(ax, "y")
    axes.flat[0].legend(loc="upper left", fontsize=7)
    fig.tight_layout()
    return fig


def machines_throughput(machines: pd.DataFrame) -> Figure:
    """Rate of every configuration on every side (result set and machine), 95% intervals."""
    fig = _machine_bars(machines, "rate", 1.0, "throughput ({unit})")
    fig.suptitle("Throughput per machine (95% intervals over each machine's blocks)", y=1.02)
    return fig


def machines_roofline(machines: pd.DataFrame) -> Figure:
    """Each side's GFLOP/s over its own jobs' matmul probes (percent), 95% intervals."""
    fig = _machine_bars(machines, "roofline_fraction", 100.0, "% of its own matmul probe")
    fig.suptitle("Fraction of each machine's own roofline", y=1.02)
    return fig


def machines_scaling(machines: pd.DataFrame) -> Figure:
    """Speedup over each machine's own baseline against the parallelism asked for, one line per
    side and engine or mode; both panels share the y axis."""
    data = machines[machines["speedup"].notna()]
    fig, axes = plt.subplots(1, len(KINDS), figsize=(12, 4.5), squeeze=False, sharey=True)
    sides = sorted(data["side"].unique()) if not data.empty else []
    for ax, kind in zip(axes.flat, KINDS.values(), strict=True):
        part = kind.rows(data)
        if kind.baseline_subject is not None:
            part = part[part[kind.subject] != kind.baseline_subject]
        if part.empty:
            _no_data(ax, f"{kind.name} scaling")
            continue
        keys = ["model", *kind.legend_keys]
        varying = [k for k in keys if part[k].nunique(dropna=True) > 1]
        lines = part.groupby(["side", kind.subject, *varying], dropna=False, sort=True)
        for i, (key, line) in enumerate(lines):
            if (line[PAR] == 1).all() and kind.baseline_subject is None:
                continue  # a 1-thread-only engine is its own baseline
            line = line.sort_values(PAR)
            x, y = line[PAR].to_numpy(dtype=float), line["speedup"].to_numpy(dtype=float)
            err = _interval_err(line, "speedup")
            if kind.baseline_subject is not None:  # start at the baseline: 1 worker, 1×
                x, y = np.r_[1.0, x], np.r_[1.0, y]
                err = np.hstack([np.zeros((2, 1)), err])
            side = sides.index(key[0])
            ax.errorbar(
                x, y, yerr=err, capsize=3, marker=MARKERS[side % len(MARKERS)],
                color=COLORS.get(key[1], f"C{i % 10}"), ls=["-", "--", ":", "-."][side % 4],
                label=" ".join([key[0], *(plain_number(k) for k in key[1:])]),
            )  # fmt: skip
        top = max(2.0, float(part[PAR].max()))
        ax.plot([1, top], [1, top], "k--", lw=1, label="ideal (linear)")
        ticks = sorted({1, *(int(v) for v in part[PAR].unique())})
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.set_xlabel(f"{kind.unit}s asked for")
        ax.set_title(kind.name)
        ax.legend(loc="upper left", fontsize=6)
    axes.flat[0].set_ylabel("speedup over the machine's own baseline (×)")
    fig.suptitle("Scaling per machine (line style and marker: machine; colour: engine or mode)")
    fig.tight_layout()
    return fig


# --- driver -------------------------------------------------------------------------------


def save(fig: Figure, out_dir: str | os.PathLike[str], stem: str) -> list[Path]:
    """Write `stem`.png and `stem`.svg atomically; close the figure."""
    paths = []
    for ext in ("png", "svg"):
        target = Path(out_dir) / f"{stem}.{ext}"
        with atomic_path(target) as tmp:
            fig.savefig(tmp, format=ext, bbox_inches="tight")
        paths.append(target)
    plt.close(fig)
    return paths


def draw_all(
    tables: dict[str, str | os.PathLike[str]], out_dir: str | os.PathLike[str]
) -> list[Path]:
    """Every figure from the tables ({name: csv path}); returns the files written. Each table is
    checked as it is read (`read_table`): a damaged one stops here with one line."""
    frames = {name: read_table(path, name) for name, path in tables.items()}
    written = []
    for figure in table_figures():
        make: Callable[..., Figure] = globals()[figure.id]
        written += save(make(*(frames[name] for name in figure.tables)), out_dir, figure.id)
        log.info("figure %s written", figure.id)
    return written


__all__ = ["TABLE_SCHEMAS", "draw_all", "save"]
