"""The timed-region guard: the lock, /proc/stat accounting and the flagging rule."""

import contextlib
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time

import pytest

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


def _region(**kwargs) -> TimedRegion:
    return TimedRegion(threads=1, lock=None, probe=lambda: (100.0, "fake"), **kwargs)


def _detached_hog(cpu: int, seconds: float) -> int:
    """A busy loop on `cpu` that is not our descendant (its shell parent exits at once), as a
    neighbour's process would be; returns its pid."""
    code = f"import os,time\nos.sched_setaffinity(0,{{{cpu}}})\nt=time.time()+{seconds}\n"
    code += "while time.time()<t: pass"
    shell = subprocess.run(
        ["sh", "-c", f'"{sys.executable}" -c "$0" >/dev/null 2>&1 & echo $!', code],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return int(shell.stdout.strip())


def test_a_busy_neighbour_is_flagged():
    cpu = min(os.sched_getaffinity(0))
    pid = _detached_hog(cpu, 3.0)
    try:
        time.sleep(0.3)
        messages = []
        with _region(warn=messages.append) as region:
            time.sleep(1.5)  # idle ourselves: the neighbour takes one CPU of ours
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    share = region.result.others_cpu_share
    assert share >= 0.8 / len(os.sched_getaffinity(0)), region.result
    assert region.result.flagged
    assert messages and messages[0].startswith("cnnpar: warning: this run's timings are disturbed")


def test_the_lock_serialises_timed_regions_and_records_the_wait(tmp_path):
    lock = tmp_path / "timing.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys,time\nfrom cnnpar.measure.interference import timing_lock\n"
         f"with timing_lock({str(lock)!r}):\n print('held', flush=True)\n time.sleep(1.5)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        messages = []
        with timing_lock(lock, warn=messages.append) as waited:
            pass
        assert waited > 1.0  # the holder kept it 1.5 s after saying so
        assert "waiting for another timed run" in messages[0] and str(lock) in messages[0]
    finally:
        holder.kill()
        holder.wait()


def test_the_region_releases_the_lock_on_error(tmp_path):
    lock = tmp_path / "timing.lock"
    region = TimedRegion(threads=1, lock=lock, probe=lambda: (1.0, "fake"))
    with pytest.raises(RuntimeError), region:
        raise RuntimeError("boom")
    assert region.result is None
    with timing_lock(lock) as waited:
        assert waited < 0.5


def test_cpu_probe_runs_at_the_given_threads_and_restores():
    import torch

    from cnnpar.measure.interference import cpu_probe

    torch.set_num_threads(1)
    assert cpu_probe(2) > 0
    assert torch.get_num_threads() == 1
