"""`cnnpar compare` and `cnnpar pack` on synthetic result sets written the way the workflow writes
them (run records through the train and classify code, tables through `build_tables`)."""

from __future__ import annotations

import html
import json
from pathlib import Path

import pandas as pd
import pytest
import test_workflow_tables as synthetic

from cnnpar import registry
from cnnpar.cli import main
from cnnpar.study import compare, figures, report, tables
from cnnpar.study.config import ConfigError, check_compare_with


def result_set(root: Path, keep=lambda params: True, **kwargs) -> Path:
    """A results directory of synthetic jobs (those whose params `keep` accepts) and tables."""
    records = [
        path
        for path in synthetic.fake_results(root / "results", **kwargs)
        if keep(json.loads(path.read_text())["params"])
    ]
    out = {name: root / f"results/tables/{name}.csv" for name in tables.TABLE_SCHEMAS}
    tables.build_tables(records, out, config=(root / "results/tables/config.yaml", "blocks: 3\n"))
    return root / "results"


@pytest.fixture(scope="module")
def sets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """BASE, and OTHER where numba at 2 threads and the processes mode run at half speed and
    torch was not run."""
    base = result_set(tmp_path_factory.mktemp("base"))
    slow = dict(synthetic.TRAIN_RATES)
    slow["numba", 2] /= 2
    slow_classify = dict(synthetic.CLASSIFY_RATES)
    slow_classify["processes", 2] /= 2
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(synthetic, "TRAIN_RATES", slow)
        mp.setattr(synthetic, "CLASSIFY_RATES", slow_classify)
        other = result_set(
            tmp_path_factory.mktemp("other"), keep=lambda p: p.get("engine") != "torch"
        )
    return {"base": base, "other": other}


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["compare", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_slower_configurations_are_marked_and_fail_the_gate(sets, capsys, tmp_path):
    csv = tmp_path / "cmp.csv"
    code, out, err = run_cli(
        capsys, str(sets["base"]), str(sets["other"]), "--fail-slower", "20", "--csv", str(csv)
    )
    assert code == 1, out + err
    assert "Welch's t on the log rates" in out and "unpaired" in out
    lines = {line.split("  ")[0]: line for line in out.splitlines()}
    numba2 = lines["train numba 2 threads F=8 B=32"]
    assert "0.50×" in numba2 and "slower *" in numba2 and "regression" in numba2
    assert "(ran 2)" in numba2
    same = lines["train numba 1 thread F=8 B=32"]
    assert "1.00×" in same and "not resolved" in same
    assert "processes 2 workers 20x30 B=64" in out
    # torch ran in BASE only: listed, never compared.
    assert f"only in {sets['base']}: train torch 2 threads F=8 B=32" in out
    assert out.strip().splitlines()[-2].startswith("FAIL: ")
    rows = pd.read_csv(csv)
    assert set(rows.columns) >= {"configuration", "ratio", "ratio_low", "ratio_high", "verdict"}
    assert rows[rows["regression"]]["configuration"].str.contains("numba 2|processes").all()


def test_a_set_against_itself_passes_and_without_a_threshold_only_reports(sets, capsys):
    code, out, _ = run_cli(capsys, str(sets["base"]), str(sets["base"]), "--fail-slower", "20")
    assert code == 0 and "OK: no configuration" in out
    assert "slower *" not in out and "only in" not in out
    code, out, _ = run_cli(capsys, str(sets["base"]), str(sets["other"]))
    assert code == 0 and "report only" in out and "slower *" in out


def test_a_packed_set_compares_like_its_directory(sets, capsys, tmp_path):
    archive = tmp_path / "other.tar.gz"
    assert main(["pack", str(sets["other"]), "-o", str(archive)]) == 0
    assert "wrote" in capsys.readouterr().out
    _, from_dir, _ = run_cli(capsys, str(sets["base"]), str(sets["other"]))
    _, from_archive, _ = run_cli(capsys, str(sets["base"]), str(archive))
    assert from_archive.replace(str(archive), "X") == from_dir.replace(str(sets["other"]), "X")
    # The archive holds the tables, the config and every run record.
    moved = tmp_path / "elsewhere"
    with compare.opened([archive]) as (unpacked,):
        assert unpacked.config_yaml == "blocks: 3\n"
        assert list(unpacked.root.rglob("run.json"))
        moved = unpacked.root
    assert not moved.exists(), "the unpacked copy is removed"


def _one_line_error(capsys, *argv: str) -> str:
    code, out, err = run_cli(capsys, *argv)
    assert code == 2, out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def test_bad_input_gets_one_line_and_exit_2(sets, capsys, tmp_path):
    base = str(sets["base"])
    assert "does not exist" in _one_line_error(capsys, base, str(tmp_path / "nope"))
    assert "not a result set" in _one_line_error(capsys, base, str(tmp_path))
    (tmp_path / "junk.txt").write_text("x")
    assert "not a result set" in _one_line_error(capsys, base, str(tmp_path / "junk.txt"))
    (tmp_path / "bad.tar.gz").write_bytes(b"not gzip")
    assert "not a readable .tar.gz archive" in _one_line_error(
        capsys, base, str(tmp_path / "bad.tar.gz")
    )
    classify_only = result_set(tmp_path / "c", keep=lambda p: "mode" in p)
    train_only = result_set(tmp_path / "t", keep=lambda p: "engine" in p)
    assert "no configuration in common" in _one_line_error(
        capsys, str(classify_only), str(train_only)
    )
    jobs = train_only / "tables/jobs.csv"
    jobs.write_text(jobs.read_text()[:-200])
    assert "damaged" in _one_line_error(capsys, base, str(train_only))
    assert "--fail-slower" in _one_line_error(capsys, base, base, "--fail-slower", "-5")


def test_a_configuration_spread_over_machines_in_one_set_is_not_compared(sets, tmp_path):
    """Jobs of one configuration that ran on two machines of one set are not pooled."""
    other = compare.read_set(sets["other"])
    jobs = other.jobs.copy()
    numba2 = (jobs["engine"] == "numba") & (jobs["parallelism_requested"] == 2)
    jobs.loc[numba2 & (jobs["block"] == 1), "machine_name"] = "node of another type"
    other.configurations = compare.configurations(jobs)
    result = compare.compare_sets(compare.read_set(sets["base"]), other, 20)
    row = result.rows[result.rows["configuration"] == "train numba 2 threads F=8 B=32"].iloc[0]
    assert row["verdict"] == "not formed" and pd.isna(row["ratio"]) and not row["regression"]
    assert "several machines" in row["note"]


@pytest.mark.slow  # seconds: spawns processes or trains
def test_the_machines_table_and_report_put_result_sets_side_by_side(sets, tmp_path):
    """The tables step with compare_with: one side per set, each with its own speedups and
    roofline; the fastest side per configuration; only resolved differences are stated."""
    records = sorted(sets["base"].rglob("run.json"))
    tdir, fdir = tmp_path / "results/tables", tmp_path / "results/figures"
    out = {name: tdir / f"{name}.csv" for name in tables.TABLE_SCHEMAS}
    built = tables.build_tables(
        records, out, compare_with=[sets["other"]], compare_names=["laptop-results"]
    )
    machines = tables.read_table(tdir / "machines.csv")
    assert set(machines["set"]) == {compare.THIS_RUN, "laptop-results"}
    assert machines["side"].nunique() == 2
    by = machines.set_index(["set", "configuration"])
    numba2 = "train numba 2 threads F=8 B=32"
    assert bool(by.loc[(compare.THIS_RUN, numba2), "fastest"])
    slow = by.loc[("laptop-results", numba2)]
    assert slow["vs_fastest"] == pytest.approx(0.5) and slow["vs_fastest_verdict"] == "slower"
    # Each side keeps its own speedup over its own baseline and its own roofline fraction.
    other_summary = tables.read_table(sets["other"] / "tables/summary.csv")
    mine = other_summary[
        (other_summary["engine"] == "numba") & (other_summary["parallelism_requested"] == 2)
    ].iloc[0]
    assert slow["speedup"] == pytest.approx(mine["speedup"]) == pytest.approx(0.95)
    assert slow["roofline_fraction"] == pytest.approx(mine["roofline_fraction"])
    same = by.loc[("laptop-results", "train numba 1 thread F=8 B=32")]
    assert same["vs_fastest_verdict"] == "not resolved"
    torch = by.loc[(compare.THIS_RUN, "train torch 2 threads F=8 B=32")]
    assert not torch["fastest"] and pd.isna(torch["vs_fastest"])  # measured on one side only
    assert len(built["machines"]) == len(machines)

    paths = {name: tdir / f"{name}.csv" for name in tables.TABLE_SCHEMAS}
    written = figures.draw_all(paths, fdir)
    section = [f.id for f in registry.FIGURES.values() if f.section == "machines"]
    assert len(section) == 3 and {f"{s}.png" for s in section} <= {p.name for p in written}
    page = report.render(
        "two machines",
        {name: tables.read_table(path) for name, path in paths.items()},
        sorted(fdir.glob("*.png")),
        {"cpu_model": "Test CPU"},
        "compare_with: [laptop-results]\n",
    )
    sections = {name: page.index(f'<section id="{name}">') for name in ("figures", "machines")}
    machines_html = page[sections["machines"] : page.index('<section id="summary">')]
    assert machines_html.count("<img") == 3
    assert "2 machines side by side" in machines_html
    here, there = by.loc[(compare.THIS_RUN, numba2), "side"], slow["side"]
    assert html.escape(f"Fastest machine for train tinycnn F=8, B=32: {here}") in machines_html
    assert html.escape(f"{numba2}: {there} runs at 0.50×") in machines_html
    assert "do not resolve" in machines_html
    # Figures of the Machines section are not repeated in the Figures section.
    figures_html = page[sections["figures"] : sections["machines"]]
    assert not any(f'id="fig-{s}"' in figures_html for s in section)


def test_a_bad_compare_with_is_one_config_line(sets, tmp_path):
    results = tmp_path / "results"
    with pytest.raises(ConfigError, match=r"^invalid config: config key 'compare_with\[1\]'"):
        check_compare_with([str(sets["other"]), str(tmp_path / "nope")], results)
    with pytest.raises(ConfigError, match="own results directory"):
        check_compare_with([str(results)], results)
    (resolved,) = check_compare_with([str(sets["other"])], results)
    assert resolved == (str(sets["other"]), sets["other"].resolve())
