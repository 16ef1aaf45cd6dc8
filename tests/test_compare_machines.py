"""Two result sets from two "machines": one with 2 CPUs (label free), and the same one confined to
one CPU (label confined, as under `taskset -c 0`), whose parallel configurations ran on the one
CPU they had: asked 2, ran 1, at half the rate. `cnnpar compare` must see the confinement in the
parallel configurations only and gate on it, and the confined set's report must put both side by
side (config key compare_with).

No workflow runs: both sets are synthetic run records written through the train and classify
code (test_workflow_tables.fake_results) and tables built by `build_tables`. Each set's blocks
drift by seeded noise whose geometric mean is 1, so by construction a serial configuration's
ratio is exactly 1 with a non-degenerate interval and a parallel one's exactly 0.5: every
verdict below follows from the program, never from the machine the test runs on.
"""

from __future__ import annotations

import html
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import test_workflow_tables as synthetic
from test_workflow_tables import _move_to_other_machine

from cnnpar.cli import main
from cnnpar.record import RECORD_NAME
from cnnpar.study import compare, figures, report, tables
from cnnpar.study.kinds import KINDS

# Two workers sharing one CPU each run at half the rate they had with a CPU each.
CONFINED = 0.5
BLOCKS = 4
NOISE = 0.05  # standard deviation of a block's log speed
# Configurations whose jobs ask for more than one CPU, and those that ask for one.
PARALLEL = (
    "train numba 2 threads", "train torch 2 threads",
    "classify threads 2 workers", "classify processes 2 workers",
)  # fmt: skip
SERIAL = ("train numpy 1 thread", "train numba 1 thread", "train torch 1 thread",
          "classify sequential 1 worker")  # fmt: skip
NUMBA2 = "train numba 2 threads F=8 B=32"


def _drift(seed: int) -> dict[int, float]:
    """The machine's speed in each block: seeded log-normal noise, centred on a geometric mean
    of 1, so two sets with different noise have the same rate per configuration."""
    logs = np.random.default_rng(seed).normal(0.0, NOISE, BLOCKS)
    return {block: float(np.exp(v)) for block, v in enumerate(logs - logs.mean(), start=1)}


def _confined(rates: dict[tuple[str, int], float]) -> dict[tuple[str, int], float]:
    return {(name, n): rate * (CONFINED if n > 1 else 1.0) for (name, n), rate in rates.items()}


def _on_machine(records: list[Path], label: str, cpus: int) -> None:
    """Rewrite every record's machine identity: one CPU model, `cpus` usable CPUs, `label`."""
    machine = {"cpu_model": "Test CPU", "cpus": cpus, "memory_gib": 8, "gpu_model": None,
               "label": label, "hostname": "testhost"}  # fmt: skip
    for path in records:
        data = json.loads(path.read_text())
        data["machine"] = machine
        data["environment"].update(cpus_available=cpus, cpus_at_start=cpus)
        path.write_text(json.dumps(data))


def _result_set(root: Path, label: str, cpus: int, compare_with: list[Path] = ()) -> Path:
    """A results directory (run records, tables, config) as the workflow leaves it."""
    results = root / "results"
    records = synthetic.fake_results(results, cpus=cpus)
    _on_machine(records, label, cpus)
    tdir = results / "tables"
    config = f"machine_label: {label}\ncompare_with: {[str(p) for p in compare_with]}\n"
    tables.build_tables(
        records,
        {name: tdir / f"{name}.csv" for name in tables.TABLE_SCHEMAS},
        config=(tdir / compare.CONFIG_NAME, config),
        compare_with=compare_with,
    )
    return results


@pytest.fixture(scope="module")
def two_machines(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(synthetic, "DRIFT", _drift(seed=1))
        free = _result_set(tmp_path_factory.mktemp("free"), "free", cpus=2)
        mp.setattr(synthetic, "DRIFT", _drift(seed=2))
        mp.setattr(synthetic, "TRAIN_RATES", _confined(synthetic.TRAIN_RATES))
        mp.setattr(synthetic, "CLASSIFY_RATES", _confined(synthetic.CLASSIFY_RATES))
        confined = _result_set(
            tmp_path_factory.mktemp("confined"), "confined", cpus=1, compare_with=[free]
        )
    return {"free": free, "confined": confined}


def _compare(capsys, *argv: str) -> tuple[int, str]:
    code = main(["compare", *argv])
    out = capsys.readouterr().out
    print(out)  # the table, for the record (pytest -s)
    return code, out


@pytest.mark.slow  # seconds: spawns processes or trains
def test_compare_sees_the_confinement_in_the_parallel_configurations_only(
    two_machines, capsys, tmp_path
):
    free, confined = two_machines["free"], two_machines["confined"]
    csv = tmp_path / "compare.csv"
    code, out = _compare(capsys, str(free), str(confined), "--fail-slower", "20", "--csv", str(csv))
    assert "free (Test CPU, 2 CPUs" in out and "confined (Test CPU, 1 CPU," in out
    rows = pd.read_csv(csv, dtype={"base_ran": str, "other_ran": str})
    assert len(rows) == len(synthetic.TRAIN_RATES) + len(synthetic.GRIDS) * len(
        synthetic.CLASSIFY_RATES
    )
    parallel = rows[rows["configuration"].str.startswith(PARALLEL)]
    serial = rows[~rows.index.isin(parallel.index)]
    assert len(parallel) == 6 and serial["configuration"].str.startswith(SERIAL).all()
    # What was asked aligns the rows; what ran is shown beside each side's rate.
    assert (parallel["base_ran"] == "2").all() and (parallel["other_ran"] == "1").all()
    assert (serial["base_ran"] == "1").all() and (serial["other_ran"] == "1").all()
    # The parallel configurations lost half their rate: significantly slower, a regression.
    assert parallel["ratio"].tolist() == pytest.approx([CONFINED] * len(parallel))
    assert (parallel["verdict"] == "slower").all() and parallel["regression"].all(), out
    assert (parallel["ratio_high"] < 1).all()
    # The serial ones did not change: the seeded noise leaves their difference unresolved.
    assert serial["ratio"].tolist() == pytest.approx([1.0] * len(serial))
    assert (serial["verdict"] == "not resolved").all() and not serial["regression"].any(), out
    assert (serial["ratio_low"] < 1).all() and (serial["ratio_high"] > 1).all()
    assert (rows[["base_blocks", "other_blocks"]] == BLOCKS).all().all()
    # The gate fails exactly on the regressions, and names each.
    assert code == 1, out
    assert f"FAIL: {len(parallel)} configuration(s) significantly slower" in out
    for configuration in parallel["configuration"]:
        assert f"{configuration} in {confined}" in out
    lines = {line.split("  ")[0]: line for line in out.splitlines()}
    for configuration in parallel["configuration"]:
        line = lines[configuration]
        assert "(ran 2)" in line and "(ran 1)" in line and "slower *" in line, line
        assert "regression: more than 20% slower" in line, line
    for configuration in serial["configuration"]:
        line = lines[configuration]
        assert "(ran 2)" not in line and "not resolved" in line and "regression" not in line


@pytest.mark.parametrize(("fail_slower", "code"), [("20", 1), ("49", 1), ("51", 0), ("90", 0)])
def test_the_gate_fails_exactly_when_a_loss_exceeds_the_threshold(
    two_machines, capsys, fail_slower, code
):
    """The confined parallel configurations run at 0.50×: slower by 50%, so a threshold under
    50% fails the gate and one over it passes, with the verdicts unchanged."""
    got, out = _compare(
        capsys, str(two_machines["free"]), str(two_machines["confined"]), "--fail-slower",
        fail_slower,
    )  # fmt: skip
    assert got == code, out
    assert out.count("slower *") == 6
    assert out.strip().splitlines()[-1].startswith("FAIL: " if code else "OK: "), out


def test_a_set_compared_with_itself_passes_the_gate(two_machines, capsys):
    for results in two_machines.values():
        code, out = _compare(capsys, str(results), str(results), "--fail-slower", "20")
        assert code == 0 and "OK: no configuration" in out, out
        assert "slower *" not in out and "faster *" not in out


@pytest.mark.slow  # seconds: spawns processes or trains
def test_the_merged_report_shows_both_machines(two_machines):
    results = two_machines["confined"]
    tdir, fdir = results / "tables", results / "figures"
    machines = tables.read_table(tdir / "machines.csv")
    labels = {name.split(" (")[0] for name in machines["machine_name"]}
    assert labels == {"free", "confined"}
    assert set(machines["set"]) == {compare.THIS_RUN, str(two_machines["free"])}
    # Each side's roofline fraction comes from its own probes: the confined side's 2-thread
    # jobs measured their probe on one CPU, so their fraction stays finite and positive.
    assert (machines["roofline_fraction"].dropna() > 0).all()
    by = machines.set_index(["set", "configuration"])
    here = by.loc[(compare.THIS_RUN, NUMBA2)]
    there = by.loc[(str(two_machines["free"]), NUMBA2)]
    assert (here["parallelism_requested"], here["parallelism"]) == (2, 1)
    assert np.isfinite(here["roofline_fraction"]) and here["roofline_fraction"] > 0
    assert bool(there["fastest"]) and here["vs_fastest_verdict"] == "slower"
    assert here["vs_fastest"] == pytest.approx(CONFINED)

    paths = {name: tdir / f"{name}.csv" for name in tables.TABLE_SCHEMAS}
    written = figures.draw_all(paths, fdir)
    page = report.write_report(
        out=results / "report.html",
        title="confined beside free",
        tables=paths,
        figures=sorted(p for p in written if p.suffix == ".png"),
        record=next(results.glob("mosaicnet-0/run.json")),
        config_yaml=(tdir / compare.CONFIG_NAME).read_text(),
    ).read_text()
    section = page[page.index('<section id="machines">') : page.index('<section id="summary">')]
    assert "2 machines side by side" in section
    assert "free (" in section and "confined (" in section
    assert section.count("<img") == 3
    # The free machine's best training (numba, 2 threads) against the confined one's best.
    lead = f"Fastest machine for train tinycnn F=8, B=32: {there['side']}"
    assert html.escape(lead) in section
    assert html.escape(f"{NUMBA2}: {here['side']} runs at 0.50×") in section


def test_no_ratio_is_formed_across_machines_in_the_records_of_a_set(two_machines, tmp_path):
    """The records of one set, with the CPU model changed on the numba 1-thread and the
    sequential jobs: the numba 2-thread speedup and every mode's comparison against
    sequential have their baseline on another machine, so none is formed."""
    copy = tmp_path / "results"
    shutil.copytree(two_machines["free"], copy)
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
