"""Two real runs of the tiny workflow on two "machines": this one, and this one confined to one
CPU with `taskset -c 0` under its own label. `cnnpar compare` must see the confinement in the
parallel configurations only, gate on it, and the confined run's report must put both side by
side (config key compare_with). Its own runs rather than test_workflow's tiny_run: that one is
interrupted and disturbed on purpose, which would blur the comparison this test needs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from test_workflow import snakemake_cmd, venv_env
from test_workflow_tables import _move_to_other_machine
from workflow_helpers import TINY

from cnnpar.cli import main
from cnnpar.record import RECORD_NAME
from cnnpar.study import tables
from cnnpar.study.kinds import KINDS

pytestmark = pytest.mark.slow

RUN_TIMEOUT_S = 600
# Configurations whose jobs ask for more than one CPU, and those that ask for one.
PARALLEL = ("train numba 2 threads", "classify processes 2 workers")
SERIAL = ("train numpy 1 thread", "train numba 1 thread", "classify sequential 1 worker")


# Over the tiny config: the two blocks it runs leave Welch's t one or two degrees of freedom, too
# few to resolve even a halving; four blocks of somewhat longer jobs resolve it.
RESOLVING = {
    "blocks": 4,
    "train": {"tinycnn": {"time_budget": 0.5}},
    "classify": {"grids": ["10x10", "40x40"], "repeats": 3},
}


def _run(workdir: Path, label: str, confine: bool, compare_with: list[str]) -> Path:
    config = workdir / "machine.yaml"
    keys = {**RESOLVING, "machine_label": label, "compare_with": compare_with}
    config.write_text(yaml.safe_dump(keys))
    # --configfile merges the machine's keys over the tiny config.
    args = ("--cores", "2", "--configfile", str(TINY), str(config))
    command = snakemake_cmd(workdir, *args)
    if confine:  # every process of the run, snakemake and its jobs, inherits the affinity
        command = ["taskset", "-c", str(min(os.sched_getaffinity(0))), *command]
    result = subprocess.run(
        command, cwd=workdir, env=venv_env(), capture_output=True, text=True,
        timeout=RUN_TIMEOUT_S, check=False,
    )  # fmt: skip
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return workdir / "results"


@pytest.fixture(scope="module")
def two_machines(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs 2 CPUs to confine a run to one of them")
    if shutil.which("taskset") is None:
        pytest.skip("taskset (util-linux) is not installed")
    free = _run(tmp_path_factory.mktemp("free"), "free", False, [])
    confined = _run(tmp_path_factory.mktemp("confined"), "confined", True, [str(free)])
    return {"free": free, "confined": confined}


def _compare(capsys, *argv: str) -> tuple[int, str]:
    code = main(["compare", *argv])
    out = capsys.readouterr().out
    print(out)  # the table, for the record (pytest -s)
    return code, out


def test_compare_sees_the_confinement_in_the_parallel_configurations_only(
    two_machines, capsys, tmp_path
):
    free, confined = two_machines["free"], two_machines["confined"]
    csv = tmp_path / "compare.csv"
    code, out = _compare(capsys, str(free), str(confined), "--fail-slower", "20", "--csv", str(csv))
    assert "free (" in out and "confined (" in out and "1 CPU" in out
    rows = pd.read_csv(csv)
    assert len(rows) == 7  # 3 training and 4 classification configurations of the tiny config
    # The gate fails exactly when a row is a regression beyond 20%.
    assert code == (1 if rows["regression"].any() else 0), out
    parallel = rows[rows["configuration"].str.startswith(PARALLEL)]
    serial = rows[~rows.index.isin(parallel.index)]
    assert len(parallel) == 3 and serial["configuration"].str.startswith(SERIAL).all()

    # The two sets ran minutes apart on a VM whose speed drifts by tens of percent between
    # runs (numba 1 thread: 1.01x and 1.22x "faster" confined in two runs), so a row's ratio
    # carries that drift. The largest mosaic's 2 processes lose half their CPUs: significantly
    # slower in every run. numba's two thread counts share each block's job (alternating
    # windows), so the drift cancels between its rows: confinement must cost the 2-thread row
    # more than the 1-thread row. No parallel row may come out faster.
    def ratio(prefix: str) -> float:
        (value,) = rows.loc[rows["configuration"].str.startswith(prefix), "ratio"]
        return float(value)

    largest = rows[rows["configuration"].str.startswith("classify processes 2 workers 40x40")]
    assert len(largest) == 1 and (largest["verdict"] == "slower").all(), out
    assert (largest["ratio"] < 0.8).all() and rows["regression"].any(), out
    assert ratio("train numba 2 threads") < ratio("train numba 1 thread"), out
    assert not (parallel["verdict"] == "faster").any(), out
    assert serial["ratio"].between(0.6, 1.6).all(), out
    # The confined parallel jobs ran with the one CPU they had: shown beside their rate.
    for prefix in PARALLEL:
        line = next(line for line in out.splitlines() if line.startswith(prefix))
        assert "(ran 2)" in line and "(ran 1)" in line, line


def test_a_set_compared_with_itself_passes_the_gate(two_machines, capsys):
    for results in two_machines.values():
        code, out = _compare(capsys, str(results), str(results), "--fail-slower", "20")
        assert code == 0 and "OK: no configuration" in out, out


def test_the_merged_report_shows_both_machines(two_machines):
    results = two_machines["confined"]
    machines = tables.read_table(results / "tables/machines.csv")
    labels = {name.split(" (")[0] for name in machines["machine_name"]}
    assert labels == {"free", "confined"}
    assert set(machines["set"]) == {"this run", str(two_machines["free"])}
    # Each side's roofline fraction comes from its own probes: the confined side's 2-thread
    # jobs measured their probe on one CPU, so their fraction stays finite and positive.
    assert (machines["roofline_fraction"].dropna() > 0).all()
    page = (results / "report.html").read_text()
    section = page[page.index('<section id="machines">') : page.index('<section id="summary">')]
    assert "2 machines side by side" in section
    assert "free (" in section and "confined (" in section
    assert section.count("<img") == 3
    assert "Fastest machine for train tinycnn" in section or "Highest estimate" in section


def test_no_ratio_is_formed_across_machines_in_the_records_of_a_real_run(two_machines, tmp_path):
    """The records of one real run, with the CPU model changed on the numba 1-thread and the
    sequential jobs: the numba 2-thread speedup and every mode's comparison against
    sequential have their baseline on another machine, so none is formed."""
    source = two_machines["free"]
    copy = tmp_path / "results"
    shutil.copytree(source, copy, ignore=shutil.ignore_patterns("logs", "benchmarks", "*.npz"))
    records = sorted(copy.rglob(RECORD_NAME))
    moved = []
    for path in records:
        params = json.loads(path.read_text())["params"]
        if params.get("block") and (
            (params.get("engine") == "numba" and params["threads"] == 1)
            or params.get("mode") == "sequential"
        ):
            _move_to_other_machine(path)
            moved.append(path)
    assert moved
    out = {name: tmp_path / f"tables/{name}.csv" for name in tables.TABLE_SCHEMAS}
    t = tables.build_tables(records, out)
    jobs, summary, comparisons = t["jobs"], t["summary"], t["comparisons"]
    assert jobs["machine"].nunique() == 2
    for _, row in summary[summary["speedup"].notna()].iterrows():
        kind = KINDS[row["study"]]
        here = jobs[(jobs["study"] == row["study"]) & (jobs["machine"] == row["machine"])]
        assert any(kind.is_baseline(r) for r in here.to_dict("records")), row.to_dict()
    numba2 = summary[(summary["engine"] == "numba") & (summary["parallelism_requested"] == 2)]
    assert numba2["speedup_verdict"].tolist() == ["not formed"]
    assert np.isnan(numba2["speedup"].iloc[0])
    processes = summary[summary["mode"] == "processes"]
    assert (processes["speedup_verdict"] == "not formed").all()
    against_sequential = comparisons[comparisons["reference"].str.startswith("sequential")]
    assert len(against_sequential) and against_sequential["ratio"].isna().all()
    assert (against_sequential["verdict"] == "not formed").all()
