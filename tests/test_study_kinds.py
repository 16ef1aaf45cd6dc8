"""Study kinds own their logic: no module of the study branches on a kind's name, and a third
kind, declared once, goes through the tables, the report and the figures over every kind."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd
import pytest

from cnnpar.study import compare, figures, kinds, report, tables
from cnnpar.study.kinds import KINDS, StudyKind, plain_number

STUDY = Path(kinds.__file__).parent
# Modules that still pick their behaviour by a kind's name (the sweep's planning and its cost
# model), to move onto the kinds; a module leaves this set once it asks the kind.
NOT_YET = {"plan.py", "cost.py"}


def _strings(node: ast.AST) -> set[str]:
    """The string literals of an operand: a constant, or a tuple, list or set of them."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value}
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return {s for element in node.elts for s in _strings(element)}
    return set()


def _is_study(node: ast.AST) -> bool:
    """`study`, `x.study` or `x["study"]`: the column that names a row's kind."""
    if isinstance(node, ast.Name):
        return node.id == "study"
    if isinstance(node, ast.Attribute):
        return node.attr == "study"
    return (
        isinstance(node, ast.Subscript)
        and isinstance(node.slice, ast.Constant)
        and node.slice.value == "study"
    )


def _branches(node: ast.AST, names: set[str]) -> bool:
    if isinstance(node, ast.Compare):
        operands = [node.left, *node.comparators]
        if any(_strings(o) & names for o in operands):
            return True
        equality = any(isinstance(op, ast.Eq | ast.NotEq) for op in node.ops)
        return equality and any(_is_study(o) for o in operands)
    if isinstance(node, ast.MatchValue):
        return bool(_strings(node.value) & names)
    if isinstance(node, ast.Dict):
        return any(key is not None and _strings(key) & names for key in node.keys)
    return False


def name_branches(source: str, names: set[str]) -> list[str]:
    """Where `source` compares something to a kind's name given as a literal, compares the
    `study` column for equality (select rows with `kind.rows`), matches a name in a `case`, or
    keys a dict literal by kind names: 'line: code'."""
    return [
        f"{node.lineno}: {(ast.get_source_segment(source, node) or '').splitlines()[0]}"
        for node in ast.walk(ast.parse(source))
        if _branches(node, names)
    ]


def test_the_name_check_finds_each_way_of_branching_on_a_name():
    names = {"train", "classify"}
    branching = [
        'if kind.name == "classify":\n    pass',
        'rows = frame[frame["study"] == "train"]',
        "rows = frame[frame['study'] == kind.name]",
        'ok = study in ("train", "bench")',
        'match kind:\n    case "train":\n        pass',
        'titles = {"train": "Training", "classify": "Classification"}',
    ]
    for source in branching:
        assert name_branches(source, names), source
    fine = ['rows = kind.rows(frame)', 'ok = row["mode"] == "sequential"',
            'kind = KINDS[row["study"]]', 'if row["study"] not in KINDS:\n    pass']  # fmt: skip
    for source in fine:
        assert not name_branches(source, names), source


def test_no_study_module_but_kinds_branches_on_a_kind_name():
    """Tables, figures, report and compare ask the kind (`cnnpar.study.kinds`) instead."""
    found = {}
    for path in sorted(STUDY.glob("*.py")):
        if path.name == "kinds.py":
            continue
        hits = name_branches(path.read_text(), set(KINDS))
        if path.name in NOT_YET:
            assert hits, f"{path.name} no longer branches on a kind's name: drop it from NOT_YET"
        elif hits:
            found[path.name] = hits
    assert not found, found


# --- a third kind -----------------------------------------------------------------------------


@dataclass(frozen=True)
class InferKind(StudyKind):
    """Batched inference: its rate is the median over a job's timed batches."""

    def setting(self, row: Any) -> list[str]:
        return [f"B={plain_number(row['batch_size'])}"]

    def rate(self, group: pd.DataFrame) -> float:
        return float((group["images"] / group["seconds"]).median())

    def job_columns(self, group: pd.DataFrame) -> dict[str, Any]:
        first = group.iloc[0]
        return {"engine": first["engine"], "rate_unit": self.rate_unit, "rate": self.rate(group),
                "accuracy": float(first["accuracy"])}  # fmt: skip


INFER = InferKind(
    "infer", noun="inference", output="batches.csv", subject="engine", unit="thread",
    rate_unit="images/s", family=("model", "engine", "batch_size"),
    config=("ranks", "parallelism_requested"), baseline_subject=None,
    order=("model", "engine", "batch_size", "parallelism_requested", "ranks"),
    legend_keys=("batch_size",), schema=(("engine", "images"), ("images",)),
    shown=("engine", "parallelism", "images", "seconds"), row_text="job × batch",
    roofline_title="Inference (forward FLOPs)",
)  # fmt: skip
RATES = {("numpy", 1): 500.0, ("numba", 1): 1000.0, ("numba", 2): 1800.0}


def _tidy() -> pd.DataFrame:
    """Two timed batches per job, two blocks; the block-2 machine runs at 0.8 speed. 10 FLOPs
    per byte; a batch's 4 MB leave one thread's 2 MB of L2 (memory, 0.5 GB/s, binds under the
    10 GFLOP/s compute roof) and fit two threads' (L2, 80 GB/s: compute binds)."""
    rows = []
    for (engine, threads), rate in RATES.items():
        for block in (1, 2):
            for batch in (1, 2):
                speed = rate * (1.0 if block == 1 else 0.8)
                rows.append({
                    "study": "infer", "job_dir": f"infer/{engine}/{threads}/{block}",
                    "model": "tinycnn", "engine": engine, "batch_size": 16, "seed": 0,
                    "block": block, "parallelism_requested": threads, "parallelism": threads,
                    "machine": "m", "machine_name": "test machine", "flops_per_image": 1e6,
                    "images": 1000, "seconds": 1000 / speed, "accuracy": 0.9, "batch": batch,
                    "roofline_gflops": 10.0 * threads, "roofline_device": "cpu",
                    "bytes_per_image": 1e5, "working_set_bytes": 4e6,
                    "bandwidth_cache_gbs": 40.0 * threads, "bandwidth_memory_gbs": 0.5,
                    "bandwidth_cache_bytes": 2e6 * threads,
                    "flagged": False, "flag_reasons": "",
                })  # fmt: skip
    return pd.DataFrame(rows)


def test_a_third_kind_goes_through_tables_report_and_figures(monkeypatch):
    monkeypatch.setitem(KINDS, INFER.name, INFER)
    jobs = tables.jobs_frame(_tidy())
    assert set(jobs["study"]) == {"infer"} and len(jobs) == len(RATES) * 2
    assert jobs["label"].iloc[0] == "infer numpy 1 thread B=16 seed 0 block 1"
    summary = tables.summarize(jobs)
    numba2 = summary[(summary["engine"] == "numba") & (summary["parallelism_requested"] == 2)]
    assert numba2["speedup"].iloc[0] == pytest.approx(1.8)
    assert list(summary["binding_roof"]) == ["bandwidth", "compute", "bandwidth"]
    assert summary["attainable_gflops"].tolist() == pytest.approx([5.0, 20.0, 5.0])
    assert numba2["baseline"].iloc[0] == "numba 1 thread"
    comparisons = tables.compare(jobs)
    assert set(comparisons["family"]) == {"B=16"} and len(comparisons) == 1  # numba 2 vs numpy

    found = report.findings_of(summary, comparisons)
    rows = [f for f in found if f.comparison]
    assert [f.comparison for f in rows] == ["inference B=16: numba 2 threads over numpy 1 thread"]
    roofs = [f.text for f in found if f.text.startswith("Roofline of")]
    assert roofs == [
        "Roofline of inference B=16 (10.00 FLOP/byte): for numba 1 thread the memory bandwidth "
        "roof (0.5 GB/s) binds at 5 GFLOP/s, of which it reached 18% [4, 74]; for numba 2 "
        "threads the compute roof binds at 20 GFLOP/s, of which it reached 8.0% [2.0, 33.2]; "
        "for numpy 1 thread the memory bandwidth roof (0.5 GB/s) binds at 5 GFLOP/s, of which "
        "it reached 8.9% [2.2, 36.9]."
    ]
    top = report.headline(summary)
    assert list(top["workload"]) == ["inference B=16"]
    assert top["configuration"].iloc[0] == "numba 2 threads"
    empty = pd.DataFrame()
    page = report.render(
        "three kinds",
        {"train": empty, "classify": empty, "jobs": jobs, "summary": summary,
         "comparisons": comparisons, "machines": compare.machines_frame(summary, jobs)},
        [], {}, "",
    )  # fmt: skip
    assert "inference B=16" in page and "tables/infer.csv: 0 rows (job × batch)" in page

    fig = figures.roofline(summary)
    assert len(fig.axes) == len(KINDS) and fig.axes[-1].get_title() == INFER.roofline_title
    plt.close(fig)
