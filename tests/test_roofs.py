"""Every timed record carries the roofs of its own parallelism: each thread count of an
interleaved job is probed at that count, and a job confined to fewer CPUs than it asked for is
probed at the CPUs it got. The probes are faked (their values name the width they ran at), so
nothing here depends on measured speeds; the real triad is checked for what it computes and
counts, and the models' byte counts against hand-computed numbers."""

from __future__ import annotations

import itertools
import json
import os
import threading
import time
import types

import numpy as np
import pytest

from cnnpar import cli, limits
from cnnpar.measure import bandwidth, interference
from cnnpar.measure.bandwidth import Bandwidth
from cnnpar.measure.interference import TimedRegion
from cnnpar.measure.threads import effective_threads
from cnnpar.nets import mosaicnet, traffic
from cnnpar.record import RunRecord

SMALL = ["--filters", "2", "--batch-size", "32", "--train-size", "64", "--test-size", "50"]
GFLOPS_PER_THREAD = 10.0
L2 = 2 << 20  # the fake probe's L2 share per thread


def fake_bandwidth(threads: int) -> Bandwidth:
    """The bandwidth probe faked: GB/s named after the width (cache 100, memory 10 per thread)."""
    return Bandwidth(100.0 * threads, 10.0 * threads, L2 * threads, 256 << 20)


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
    monkeypatch.setattr(interference, "cpu_bandwidth", fake_bandwidth)
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
        assert result.bandwidth_cache_gbs == 100.0 * count
        assert result.bandwidth_memory_gbs == 10.0 * count
        assert result.bandwidth_cache_bytes == L2 * count
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
        assert guard.bandwidth_memory_gbs == 10.0 * count
    run = RunRecord.read(tmp_path / "threads~2" / "run.json")
    assert run.results["bytes_per_image"] == pytest.approx(
        4 * (1568 + 5 * 338 + 40 + 4 * 3410 / 32)
    )


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


# --- the bandwidth roof ---------------------------------------------------------------------


def test_each_roof_is_the_higher_probe_of_before_and_after():
    readings = iter([Bandwidth(100.0, 12.0, L2, 1), Bandwidth(90.0, 15.0, L2, 1)])
    with TimedRegion(
        threads=1, lock=None, probe=lambda t: (10.0, "fake"), bandwidth=lambda t: next(readings)
    ) as region:
        pass
    guard = region.result
    assert (guard.bandwidth_cache_gbs, guard.bandwidth_memory_gbs) == (100.0, 15.0)
    assert (guard.bandwidth_cache_bytes, guard.bandwidth_memory_bytes) == (L2, 1)


def test_a_record_from_before_the_bandwidth_probes_reads_with_none(tmp_path):
    with TimedRegion(
        threads=1, lock=None, probe=lambda t: (10.0, "fake"), bandwidth=fake_bandwidth
    ) as region:
        pass
    guard = region.result.as_dict()
    old = {k: v for k, v in guard.items() if not k.startswith("bandwidth_")}
    from cnnpar.measure.interference import Interference

    restored = Interference(**json.loads(json.dumps(old)))
    assert restored.bandwidth_cache_gbs is None and restored.bandwidth_memory_gbs is None
    assert restored.roofline_gflops == 10.0


def test_the_triad_moves_three_arrays_per_pass():
    """Each pass writes one array from the other two (a = b + s·c, then b = a + s·c, ...): after
    3 passes a = b0 + 3s·c, so every pass read and wrote every element; STREAM counts 12 bytes
    per element and pass."""
    kernel = bandwidth.triad_kernel()
    assert kernel is not None
    n = 1000
    a, b, c = np.zeros(n, np.float32), np.ones(n, np.float32), np.full(n, 2.0, np.float32)
    kernel(a, b, c, np.float32(0.25), 3)
    np.testing.assert_allclose(a, 1.0 + 3 * 0.25 * 2.0)
    np.testing.assert_allclose(b, 1.0 + 2 * 0.25 * 2.0)
    assert bandwidth.triad_bytes(n) == 3 * 4 * n
    assert bandwidth.triad_bytes(n, passes=5, threads=2) == 12 * n * 5 * 2


@pytest.mark.parametrize("threads", [1, 3])
def test_the_probe_counts_every_threads_bytes_over_the_rounds_span(monkeypatch, threads):
    """With a clock that makes each round take exactly one second in every worker thread, the
    rate is all threads' triad bytes per second: 12 bytes × elements × threads."""
    ticks = threading.local()

    def clock() -> float:
        if threading.current_thread() is threading.main_thread():
            return time.perf_counter()
        ticks.count = getattr(ticks, "count", itertools.count())
        return float(next(ticks.count))  # a round's start and end: one apart

    monkeypatch.setattr(bandwidth, "time", types.SimpleNamespace(perf_counter=clock))
    calls = []

    def kernel(a, b, c, s, passes):
        calls.append((a.size, passes))

    gbs = bandwidth.triad_gbs(threads, 1000, budget_s=0.0, kernel=kernel, round_s=0.5)
    assert gbs == pytest.approx(12 * 1000 * threads / 1e9)
    assert {size for size, _ in calls} == {1000} and {p for _, p in calls} == {1}
    assert len(calls) == threads * (1 + bandwidth.MIN_ROUNDS)  # warm-up, then the rounds


def test_a_real_probe_reports_both_roofs(monkeypatch):
    """A short real probe gives a rate for both working sets (values not compared: the machine
    may be busy)."""
    monkeypatch.setattr(bandwidth, "MEMORY_PROBE_BYTES", 8 << 20)  # short
    result = bandwidth.cpu_bandwidth(2, levels={2: (256 << 10, 1)})
    assert result.cache_gbs > 0 and result.memory_gbs > 0
    assert result.cache_bytes == 2 * (256 << 10)
    assert result.memory_bytes == bandwidth.triad_bytes((8 << 20) // 2 // 12, threads=2)


def test_cache_sizes_are_read_from_sysfs(tmp_path):
    for index, (level, kind, size, shared) in enumerate(
        [(1, "Data", "48K", "0"), (1, "Instruction", "64K", "0"), (2, "Unified", "2048K", "0-1"),
         (3, "Unified", "480M", "0-7")]
    ):  # fmt: skip
        where = tmp_path / f"index{index}"
        where.mkdir()
        for name, value in (("level", level), ("type", kind), ("size", size),
                            ("shared_cpu_list", shared)):  # fmt: skip
            (where / name).write_text(f"{value}\n")
    levels = bandwidth.cache_levels(tmp_path)
    assert levels == {1: (48 << 10, 1), 2: (2 << 20, 2), 3: (480 << 20, 8)}
    assert bandwidth.l2_share_bytes(levels) == 1 << 20  # shared by two CPUs
    assert bandwidth.cache_levels(tmp_path / "missing") == {}
    assert bandwidth.l2_share_bytes({}) == bandwidth.DEFAULT_L2_BYTES


# --- the bytes a model moves ------------------------------------------------------------------


def test_the_traffic_model_on_a_toy_network():
    """x of 4 floats, a hidden layer of 3, logits of 2, P = 10 parameters, B = 5."""
    # forward: read x 4, write and read the hidden 3 + 3, write the logits 2
    assert traffic.activation_floats((4, 3, 2), training=False) == 12
    # + the loss reads the logits, writes their gradient (4); layer 2 reads the hidden, its
    # output gradient, writes the hidden's gradient (3 + 2 + 3); layer 1 reads x and it (4 + 3)
    assert traffic.activation_floats((4, 3, 2), training=True) == 12 + 4 + 8 + 7
    assert traffic.bytes_per_image((4, 3, 2), 10, 5, training=False) == 4 * (12 + 10 / 5)
    assert traffic.bytes_per_image((4, 3, 2), 10, 5, training=True) == 4 * (31 + 40 / 5)
    assert traffic.bytes_per_image((4, 3, 2), 10, 5, True, adam=True) == 4 * (31 + 80 / 5)
    assert traffic.working_set_bytes((4, 3, 2), 10, 5, training=False) == 4 * (5 * 9 + 10)
    assert traffic.working_set_bytes((4, 3, 2), 10, 5, True, adam=True) == 4 * (5 * 14 + 40)


def test_mosaicnet_bytes_per_image():
    # x 784; pooled conv outputs 3,136 and 1,568; FC outputs 512, 256; logits 10
    assert mosaicnet.LAYER_FLOATS == (784, 16 * 14 * 14, 32 * 7 * 7, 512, 256, 10)
    inner = 3_136 + 1_568 + 512 + 256
    assert 784 + 2 * inner + 10 == 11_738
    assert mosaicnet.bytes_per_image(256, training=False) == 61_803.15625
    # training (Adam): + loss 20, inputs read 6,256, output gradients 5,482, input gradients 5,472
    assert 11_738 + 20 + 6_256 + 5_482 + 5_472 == 28_968
    assert mosaicnet.bytes_per_image(64, training=True) == 4 * (28_968 + 8 * 950_474 / 64)
    assert mosaicnet.working_set_bytes(256, training=False) == 4 * (256 * 6_266 + 950_474)
