"""Every timed record carries the roofline of its own parallelism: each thread count of an
interleaved job is probed at that count, and a job confined to fewer CPUs than it asked for is
probed at the CPUs it got. The probe is faked (its value names the width it ran at), so nothing
here depends on measured speeds."""

from __future__ import annotations

import os

import pytest

from cnnpar import cli, limits
from cnnpar.measure import interference
from cnnpar.measure.interference import TimedRegion
from cnnpar.measure.threads import effective_threads
from cnnpar.record import RunRecord

SMALL = ["--filters", "2", "--batch-size", "32", "--train-size", "64", "--test-size", "50"]
GFLOPS_PER_THREAD = 10.0


@pytest.fixture
def probes(monkeypatch) -> list[tuple[int, int, int | None]]:
    """Fake the CPU probe: GFLOPS_PER_THREAD × its width; records (width, torch's width,
    numba's width or None where its pool has not started) of every call, as the pools stood
    when it ran."""
    calls = []

    def fake(threads: int) -> float:
        pools = effective_threads()
        calls.append((threads, pools["torch_threads"], pools["numba_threads"]))
        return GFLOPS_PER_THREAD * threads

    monkeypatch.setattr(interference, "cpu_probe", fake)
    return calls


def _confine(monkeypatch, cpus: set[int]) -> None:
    """As if started under `taskset -c <cpus>`: every affinity read sees `cpus`."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(cpus))
    monkeypatch.setattr(limits, "CPUS_AT_START", len(cpus))


def test_a_region_probes_each_count_at_its_own_width(monkeypatch, probes):
    _confine(monkeypatch, {0, 1})
    switched = []
    with TimedRegion(threads=[1, 2], lock=None, switch=switched.append) as region:
        pass
    assert [width for width, _, _ in probes] == [1, 2, 1, 2]  # before, then after
    assert switched == [1, 2, 2, 1, 2, 2]  # each probe at its width, then back to the widest
    for count in (1, 2):
        result = region.results[count]
        assert result.probe_before_gflops == result.probe_after_gflops == GFLOPS_PER_THREAD * count
        assert result.roofline_gflops == GFLOPS_PER_THREAD * count
        assert result.roofline_device == f"cpu ({count} thread{'s' * (count > 1)})"
    assert region.result == region.results[2]


def test_a_confined_region_probes_the_cpus_it_got(monkeypatch, probes):
    _confine(monkeypatch, {0})
    with TimedRegion(threads=[1, 2], lock=None) as region:
        pass
    assert [width for width, _, _ in probes] == [1, 1]  # one width took effect: probed once
    assert region.results[1].roofline_device == "cpu (1 thread)"
    assert region.results[2].roofline_gflops == GFLOPS_PER_THREAD
    assert region.results[2].roofline_device == "cpu (1 thread); 2 asked, 1 CPU available"


@pytest.mark.parametrize("engine", ["numba", "torch"])
def test_each_interleaved_count_records_its_own_probe(tmp_path, monkeypatch, probes, engine):
    _confine(monkeypatch, {0, 1})
    code = cli.main(
        ["train", "--model", "tinycnn", *SMALL, "--engine", engine, "--threads", "1,2",
         "--time-budget", "0.05", "--epochs", "50", "--timing-lock", str(tmp_path / "lock"),
         "--out", str(tmp_path / "threads~{threads}")]
    )  # fmt: skip
    assert code == 0
    # Each probe ran with the pools switched to its width, as the windows switch them.
    assert [p[0] for p in probes] == [1, 2, 1, 2]
    for width, torch_width, numba_width in probes:
        assert torch_width == width
        if engine == "numba":
            assert numba_width == width
    for count in (1, 2):
        guard = RunRecord.read(tmp_path / f"threads~{count}" / "run.json").interference
        assert guard.probe_before_gflops == guard.probe_after_gflops == GFLOPS_PER_THREAD * count
        assert guard.roofline_gflops == GFLOPS_PER_THREAD * count
        assert guard.roofline_device == f"cpu ({count} thread{'s' * (count > 1)})"


def test_a_confined_interleaved_job_probes_what_it_got(tmp_path, monkeypatch, probes):
    _confine(monkeypatch, {0})
    code = cli.main(
        ["train", "--model", "tinycnn", *SMALL, "--engine", "numba", "--threads", "1,2",
         "--time-budget", "0.05", "--epochs", "50", "--timing-lock", str(tmp_path / "lock"),
         "--out", str(tmp_path / "threads~{threads}")]
    )  # fmt: skip
    assert code == 0
    assert [p[0] for p in probes] == [1, 1]
    run = RunRecord.read(tmp_path / "threads~2" / "run.json")
    assert run.parallelism.requested == 2 and run.parallelism.effective == 1
    assert run.interference.roofline_gflops == GFLOPS_PER_THREAD
    assert run.interference.roofline_device == "cpu (1 thread); 2 asked, 1 CPU available"
    one = RunRecord.read(tmp_path / "threads~1" / "run.json").interference
    assert one.roofline_gflops == GFLOPS_PER_THREAD and one.roofline_device == "cpu (1 thread)"


def test_a_confined_single_job_probes_what_it_got(tmp_path, monkeypatch, probes):
    _confine(monkeypatch, {0})
    code = cli.main(
        ["train", "--model", "tinycnn", *SMALL, "--engine", "torch", "--threads", "2",
         "--epochs", "1", "--timing-lock", str(tmp_path / "lock"), "--out", str(tmp_path / "run")]
    )  # fmt: skip
    assert code == 0
    assert [p[0] for p in probes] == [1, 1]
    guard = RunRecord.read(tmp_path / "run" / "run.json").interference
    assert guard.roofline_gflops == GFLOPS_PER_THREAD
    assert guard.roofline_device == "cpu (1 thread); 2 asked, 1 CPU available"
