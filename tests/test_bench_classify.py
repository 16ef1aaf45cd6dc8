"""`cnnpar bench classify` as a small study: a tiny bench (2 blocks, sequential and threads at
1 and 2 workers, a 4x4 mosaic) whose runs follow the study's plan and write ordinary
`cnnpar classify` records, its printout, and the one-line refusals of bad input. No test looks
at a measured speed, ratio or verdict."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cnnpar import classify
from cnnpar.bench import common
from cnnpar.bench.classify import classify_bench
from cnnpar.cli import main
from cnnpar.measure import interference
from cnnpar.measure.machine import this_machine
from cnnpar.record import RunRecord
from cnnpar.study import plan

MODES, WORKERS, BLOCKS = ("sequential", "threads"), (1, 2), 2


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The bench on a tiny mosaic; the compute probe is a constant (its cost, not its value,
    matters here) and classify.run logs each call before running it."""
    tmp = tmp_path_factory.mktemp("bench")
    calls: list[tuple[int | None, str, int]] = []
    lines: list[str] = []
    real_run = classify.run

    def run(config: classify.ClassifyConfig, *args: Any, **kwargs: Any) -> Any:
        calls.append((config.block, config.mode, config.workers))
        return real_run(config, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(interference, "cpu_probe", lambda threads: 10.0 * threads)
        patch.setattr(classify, "run", run)
        summary, checks = classify_bench(
            MODES, WORKERS, BLOCKS, rows=4, cols=4, repeats=1, out=tmp / "out",
            csv_path=tmp / "summary.csv", timing_lock=str(tmp / "lock"), echo=lines.append,
        )  # fmt: skip
    return {"out": tmp / "out", "calls": calls, "lines": lines, "summary": summary,
            "checks": checks}  # fmt: skip


@pytest.mark.slow  # seconds: spawns processes or trains
def test_runs_follow_the_plan(bench: dict[str, Any]) -> None:
    section = {"workers": list(WORKERS), "ranks": [], "batch_sizes": [256], "seeds": [0]}
    configs = plan.classify_configs(MODES, ["4x4"], section)
    planned = [
        (block, run.subject, run.configs[0]["workers"])
        for block in range(1, BLOCKS + 1)
        for run in plan.family_runs("classify", configs, block)
    ]
    assert bench["calls"] == planned
    first = [(1, "sequential", 1), (1, "threads", 1), (1, "threads", 2)]
    assert planned == first + [(2, m, w) for _, m, w in reversed(first)], "even blocks reverse"


@pytest.mark.slow  # shares a module fixture that runs the command
def test_every_run_writes_an_ordinary_classify_record(bench: dict[str, Any]) -> None:
    records = [RunRecord.read(p) for p in sorted(bench["out"].rglob("run.json"))]
    assert {r.command for r in records} == {"classify"}
    seen = sorted((r.params["block"], r.params["mode"], r.params["workers"]) for r in records)
    assert seen == sorted((b, m, w) for b in (1, 2) for _, m, w in [
        (0, "sequential", 1), (0, "threads", 1), (0, "threads", 2)
    ])  # fmt: skip
    for record in records:
        assert record.params["grid"] == "4x4" and record.params["batch_size"] == 256
        assert record.results["cells"] == 16 and record.interference is not None
    summary = bench["summary"]
    assert sorted(zip(summary["mode"], summary["parallelism_requested"], strict=True)) == [
        ("sequential", 1), ("threads", 1), ("threads", 2)
    ]  # fmt: skip
    assert set(summary["blocks"]) == {BLOCKS}
    assert (bench["out"] / "random_init.pt").is_file(), "seeded random-init weights"


@pytest.mark.slow  # shares a module fixture that runs the command
def test_printout_names_the_cpu_and_the_target(bench: dict[str, Any]) -> None:
    lines = bench["lines"]
    cpu = this_machine().cpu_model
    assert lines[0].startswith("cnnpar bench classify on ") and cpu in lines[0]
    assert f"targets on {cpu}" in lines
    (check,) = bench["checks"]
    assert check.target == next(t for t in common.TARGETS if t.study == "classify")
    assert check.interval is not None and check.interval.n == BLOCKS
    assert check.verdict == common.verdict(check.interval, check.target.threshold)
    (line,) = [x for x in lines if x.strip().startswith(check.target.name)]
    assert line.rstrip().endswith(check.verdict)
    assert any(x.startswith("threads 2 workers 4x4 B=256") for x in lines)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--modes", "nope"], "--modes"),
        (["--modes", "ranks"], "--modes"),
        (["--workers", "2,2"], "--workers"),
        (["--workers", "0"], "--workers"),
        (["--blocks", "0"], "--blocks"),
        (["--repeats", "0"], "--repeats"),
        (["--rows", "0"], "--rows"),
        (["--weights", "{tmp}/missing.pt"], "--weights"),
        (["--csv", "{tmp}"], "--csv"),
        (["--out", "{tmp}/a-file"], "--out"),
        (["--only", "1"], "--only"),  # the old bench's options are gone
        (["--warmup", "0"], "--warmup"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    args: list[str], says: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "a-file").write_text("")
    argv = ["bench", "classify", *(a.replace("{tmp}", str(tmp_path)) for a in args)]
    assert main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and says in err and "Traceback" not in err, err
    assert captured.out == "", "nothing measured"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"], "nothing written"
