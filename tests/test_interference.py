"""The timed-region guard: the lock, /proc/stat accounting and the flagging rule."""

import multiprocessing as mp
import os
import subprocess
import sys
import threading
import time
import types

import pytest

from cnnpar.measure.bandwidth import Bandwidth
from cnnpar.measure.interference import (
    Limits,
    TimedRegion,
    assess,
    proc_stat_ticks,
    timing_lock,
)

STAT = """cpu  100 0 50 1000 0 0 0 0 0 0
cpu0 10 1 5 500 3 2 1 7 0 0
cpu1 20 0 10 500 0 0 0 0 0 0
cpu2 40 0 0 0 0 0 0 9 0 0
intr 123
"""


def test_proc_stat_counts_only_the_allowed_cpus():
    assert proc_stat_ticks({0}, STAT) == (10 + 1 + 5 + 2 + 1, 7)
    assert proc_stat_ticks({0, 1}, STAT) == (19 + 30, 7)
    assert proc_stat_ticks({2}, STAT) == (40, 9)


def _assess(busy_ticks: int, own: float, probes=(100.0, 100.0), steal: int = 0):
    return assess(
        seconds=2.0,
        cpus=2,
        ticks=((0, 0), (busy_ticks, steal)),
        own_cpu_s=own,
        probes=probes,
        device="cpu (2 threads)",
        lock_wait_s=0.0,
        limits=Limits(),
        hz=100,
    )


def test_others_share_is_busy_time_minus_own_tree_over_capacity():
    quiet = _assess(busy_ticks=390, own=3.8)  # 3.9 s busy, 3.8 s ours, of 4 CPU-seconds
    assert quiet.others_cpu_share == pytest.approx(0.1 / 4)
    assert not quiet.flagged
    busy = _assess(busy_ticks=400, own=2.0)  # someone else held a core for half the run
    assert busy.others_cpu_share == pytest.approx(0.5)
    assert busy.flagged and "other processes took 50%" in busy.reasons[0]


def test_probe_change_and_steal_flag_a_run():
    drift = _assess(busy_ticks=380, own=3.8, probes=(100.0, 80.0))
    assert drift.probe_change == pytest.approx(0.2) and drift.roofline_gflops == 100.0
    assert drift.flagged and "matmul probe" in drift.reasons[0]
    stolen = _assess(busy_ticks=380, own=3.8, steal=60)
    assert stolen.steal_share == pytest.approx(0.15) and stolen.flagged
    unknown = assess(
        seconds=1.0, cpus=1, ticks=(None, None), own_cpu_s=1.0, probes=(None, None),
        device="cuda (torch sees no GPU)", lock_wait_s=0.0, limits=Limits(), hz=100,
    )  # fmt: skip
    assert unknown.others_cpu_share is None and unknown.roofline_gflops is None
    assert not unknown.flagged


def _burn(cpu_seconds: float) -> None:
    while time.process_time() < cpu_seconds:
        pass


def test_own_child_processes_count_as_this_run():
    """Spawned, joined workers are this run's CPU time, not another process's."""
    from cnnpar.measure.interference import own_cpu_seconds

    ctx = mp.get_context("spawn")
    before = own_cpu_seconds()
    workers = [ctx.Process(target=_burn, args=(0.5,)) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert own_cpu_seconds() - before >= 2 * 0.5


NO_BANDWIDTH = Bandwidth(None, None, None, None)


def _region(**kwargs) -> TimedRegion:
    return TimedRegion(
        threads=1,
        lock=None,
        probe=lambda threads: (100.0, "fake"),
        bandwidth=lambda threads: NO_BANDWIDTH,
        **kwargs,
    )


class _Readings:
    """What the region reads, injected: /proc/stat texts (parsed by the real proc_stat_ticks),
    this process tree's CPU seconds and the clock, each a sequence read once per call; the last
    value stays."""

    def __init__(self, values: list) -> None:
        self.values = list(values)

    def __call__(self, *args):
        return self.values.pop(0) if len(self.values) > 1 else self.values[0]


def _stat(cpu0_busy: int, cpu1_busy: int) -> str:
    return (
        f"cpu  {cpu0_busy + cpu1_busy} 0 0 2000 0 0 0 0 0 0\n"
        f"cpu0 {cpu0_busy} 0 0 1000 0 0 0 0 0 0\ncpu1 {cpu1_busy} 0 0 1000 0 0 0 0 0 0\n"
    )


def test_a_busy_neighbour_is_flagged(monkeypatch):
    """Over a 2-second region on 2 CPUs, a process that is not ours held CPU 0 throughout
    while we used 0.1 s of CPU 1: half the capacity went to others, the run is flagged and
    warns. The readings are injected, so the share is exact whatever the machine is doing."""
    from cnnpar.measure import interference

    hz = os.sysconf("SC_CLK_TCK")
    stats = _Readings([_stat(100, 100), _stat(100 + 2 * hz, 100 + hz // 10)])
    real_ticks = interference.proc_stat_ticks
    monkeypatch.setattr(interference, "proc_stat_ticks", lambda cpus: real_ticks(cpus, stats()))
    monkeypatch.setattr(interference, "available_cpus", lambda: {0, 1})
    monkeypatch.setattr(interference, "own_cpu_seconds", _Readings([5.0, 5.1]))
    clock = _Readings([10.0, 12.0])
    monkeypatch.setattr(interference, "time", types.SimpleNamespace(perf_counter=clock))
    messages = []
    with _region(warn=messages.append) as region:
        pass
    assert region.result.seconds == pytest.approx(2.0) and region.result.cpus == 2
    assert region.result.others_cpu_share == pytest.approx((2.0 + 0.1 - 0.1) / (2.0 * 2))
    assert region.result.flagged
    assert messages and messages[0].startswith("cnnpar: warning: this run's timings are disturbed")
    assert "other processes took 50%" in messages[0]


def test_the_lock_serialises_timed_regions_and_records_the_wait(tmp_path):
    """The holder keeps the lock until told to let go, which the test does only HELD_S after
    the waiter said it was waiting: the recorded wait is at least HELD_S by the order of
    events, however slowly either process runs."""
    held_s = 0.5
    lock = tmp_path / "timing.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys\nfrom cnnpar.measure.interference import timing_lock\n"
         f"with timing_lock({str(lock)!r}):\n print('held', flush=True)\n sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        messages, waited = [], []
        blocked = threading.Event()

        def warn(message: str) -> None:
            messages.append(message)
            blocked.set()

        def take() -> None:
            with timing_lock(lock, warn=warn) as seconds:
                waited.append(seconds)

        taker = threading.Thread(target=take, daemon=True)
        taker.start()
        assert blocked.wait(timeout=120), "the lock was free while the holder held it"
        time.sleep(held_s)
        assert not waited, "taken while the holder still held it"
        holder.stdin.close()  # the holder returns and exits, releasing the lock
        taker.join(timeout=120)
        assert not taker.is_alive(), "still waiting after the holder let go"
        assert waited[0] >= held_s
        assert "waiting for another timed run" in messages[0] and str(lock) in messages[0]
    finally:
        holder.kill()
        holder.wait()


def test_the_region_releases_the_lock_on_error(tmp_path):
    lock = tmp_path / "timing.lock"
    region = TimedRegion(
        threads=1, lock=lock, probe=lambda threads: (1.0, "fake"), bandwidth=lambda t: NO_BANDWIDTH
    )
    with pytest.raises(RuntimeError), region:
        raise RuntimeError("boom")
    assert region.result is None
    messages = []
    with timing_lock(lock, warn=messages.append):
        assert messages == [], "the lock was still held after the error"


def test_cpu_probe_runs_at_the_given_threads_and_restores():
    import torch

    from cnnpar.measure.interference import cpu_probe

    torch.set_num_threads(1)
    assert cpu_probe(2) > 0
    assert torch.get_num_threads() == 1
