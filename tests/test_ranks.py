"""cnnpar.ranks: starting, confining and stopping torch.distributed ranks, and the torch-ddp
engine end to end (MosaicNet with Adam against --engine torch, the run record)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import ranks_faults
from processes import left_running

from cnnpar import ranks, train
from cnnpar.measure.machine import this_machine

TESTS = Path(__file__).parent


def _no_ranks_left() -> None:
    children = psutil.Process().children(recursive=True)
    alive = [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    assert not [c for c in alive if "spawn" in " ".join(c.cmdline())], alive


def test_ranks_are_confined_and_described():
    value = ranks.run(ranks_faults.rank_ok, ranks=2, threads=1, timeout_s=30)
    assert value["rank"] == 0
    described = value["ranks"]
    assert [r["rank"] for r in described] == [0, 1]
    cpus = sorted(os.sched_getaffinity(0))
    assert [r["cpu_affinity"] for r in described] == [[cpus[0]], [cpus[1]]]
    assert all(r["torch_threads"] == 1 for r in described)
    assert len({r["pid"] for r in described}) == 2
    _no_ranks_left()


def test_a_rank_that_dies_ends_the_job_naming_it():
    start = time.monotonic()
    with pytest.raises(ranks.RankError, match=r"^rank 1 died \(exit code 7\)$"):
        ranks.run(ranks_faults.rank_dies, ranks=2, threads=1, timeout_s=30)
    assert time.monotonic() - start < 30  # at once, not after the collective timeout
    _no_ranks_left()


def test_ranks_that_all_die_at_once_are_still_reported():
    """All gone and every pipe closed between two passes of the launcher's loop used to end it
    with rank 0's value (None, exit 0); a timing race, so this run may not hit it."""
    with pytest.raises(ranks.RankError, match=r"died \(exit code 7\)"):
        ranks.run(ranks_faults.every_rank_dies, ranks=2, threads=1, timeout_s=30)
    _no_ranks_left()


@pytest.mark.slow  # seconds: spawns processes or trains
def test_a_rank_that_hangs_ends_the_job_after_the_timeout():
    start = time.monotonic()
    with pytest.raises(ranks.RankError, match=r"^rank 1 stopped responding: .* waited 3 s"):
        ranks.run(ranks_faults.rank_hangs, ranks=2, threads=1, timeout_s=3)
    assert time.monotonic() - start < 3 + ranks.FAILURE_GRACE_S + ranks.STOP_GRACE_S + 20
    _no_ranks_left()


def test_more_threads_than_cpus_is_refused_before_any_rank_starts(tmp_path):
    cpus = len(os.sched_getaffinity(0))
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "cnnpar", "train", "--engine", "torch-ddp", "--ranks",
         str(cpus), "--threads", "2", "--out", str(out)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"cnnpar train: error: --ranks {cpus} x --threads 2 = {2 * cpus} threads, more than "
        f"the {cpus} CPU(s) available; use fewer --ranks or --threads"
    ]
    assert not out.exists()


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    return env


def _run_watching(args: list[str], timeout: float = 180) -> subprocess.CompletedProcess:
    """Run a command, noting every process it starts (its ranks) while it runs; after it ends,
    assert none of them is left (ranks orphaned by their launcher would outlive it)."""
    proc = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env()
    )
    parent = psutil.Process(proc.pid)
    seen: dict[int, psutil.Process] = {}
    deadline = time.monotonic() + timeout
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(psutil.Error):
                for child in parent.children(recursive=True):
                    seen.setdefault(child.pid, child)
            time.sleep(0.1)
        stdout, stderr = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
    assert len(seen) >= 2, "never saw the ranks run"  # the watch itself must see something
    left = left_running(list(seen.values()))
    assert not left, f"processes left behind: {left}"
    return subprocess.CompletedProcess(args, proc.returncode, stdout, stderr)


@pytest.mark.slow  # seconds: spawns processes or trains
def test_cli_a_dying_rank_exits_2_with_one_line(tmp_path):
    out = tmp_path / "run"
    result = _run_watching(
        [sys.executable, str(TESTS / "ranks_faults.py"), "train", "--engine", "torch-ddp",
         "--ranks", "2", "--train-size", "64", "--test-size", "10", "--epochs", "1",
         "--timing-lock", str(tmp_path / "lock"), "--out", str(out)]
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert errors == ["cnnpar train: error: rank 1 died (exit code 7)"], result.stderr
    assert not out.exists()


@pytest.mark.slow  # seconds: spawns processes or trains
def test_cli_classify_a_hanging_rank_exits_2_within_the_timeout(weights, tmp_path):
    out = tmp_path / "run"
    start = time.monotonic()
    result = _run_watching(
        [sys.executable, str(TESTS / "ranks_faults.py"), "hang", "classify",
         f"--weights={weights}", "--rows=4", "--cols=5", "--mode=ranks", "--ranks=2",
         "--rank-timeout=3", f"--timing-lock={tmp_path / 'lock'}", f"--out={out}"]
    )  # fmt: skip
    elapsed = time.monotonic() - start
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith("cnnpar classify: error: rank 1 stopped responding: "), errors
    # the timeout, the grace for the others' reports and the stop, plus start-up (spawn, torch)
    assert elapsed < 3 + ranks.FAILURE_GRACE_S + ranks.STOP_GRACE_S + 60
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.slow  # seconds: spawns processes or trains
def test_cli_classify_a_dying_rank_exits_2_with_one_line(weights, tmp_path):
    out = tmp_path / "run"
    result = _run_watching(
        [sys.executable, str(TESTS / "ranks_faults.py"), "classify", f"--weights={weights}",
         "--rows=4", "--cols=5", "--mode=ranks", "--ranks=2",
         f"--timing-lock={tmp_path / 'lock'}", f"--out={out}"]
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert errors == ["cnnpar classify: error: rank 1 died (exit code 7)"], result.stderr
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.slow  # seconds: spawns processes or trains
def test_cli_ctrl_c_ends_every_rank_with_130(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "cnnpar", "train", "--engine", "torch-ddp", "--ranks", "2",
         "--epochs", "50", "--train-size", "6000", "--test-size", "10",
         "--timing-lock", str(tmp_path / "lock"), "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
        # Ctrl-C reaches a terminal's foreground job; a test run launched in the background
        # (`pytest &` without job control) would pass SIGINT on ignored, as POSIX asks.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    parent = psutil.Process(proc.pid)
    try:
        deadline = time.monotonic() + 120
        while len(parent.children(recursive=True)) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(3)  # the ranks are training
        started = parent.children(recursive=True)
        assert started, "no rank ever started"
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert "cnnpar: interrupted" in stderr
    assert not left_running(started)
    assert not out.exists()


@pytest.mark.slow  # seconds: spawns processes or trains
def test_mosaicnet_ddp_matches_torch_with_adam(tmp_path):
    import torch

    common = dict(model="mosaicnet", train_size=96, test_size=20, epochs=1, batch_size=32,
                  seed=3, timing_lock=None)  # fmt: skip
    single = train.run(train.TrainConfig(out=str(tmp_path / "torch"), engine="torch", **common))
    ddp = train.run(
        train.TrainConfig(out=str(tmp_path / "ddp"), engine="torch-ddp", ranks=2, **common)
    )
    a = torch.load(tmp_path / "torch" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "ddp" / "model.pt", weights_only=True)
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_allclose(b[key].numpy(), a[key].numpy(), rtol=1e-4, atol=1e-5)
    assert ddp.rows[0]["train_loss"] == pytest.approx(single.rows[0]["train_loss"], rel=1e-4)


@pytest.mark.slow  # seconds: spawns processes or trains
def test_ddp_run_record_lists_every_rank_and_its_communication(tmp_path):
    out = tmp_path / "run"
    result = train.run(
        train.TrainConfig(out=str(out), engine="torch-ddp", ranks=2, threads=1, train_size=100,
                          test_size=20, epochs=1, batch_size=30, timing_lock=None)
    )  # fmt: skip
    record = json.loads((out / "run.json").read_text())
    results = record["results"]
    assert record["parallelism"]["processes"] == 2
    assert record["parallelism"]["requested"] == record["parallelism"]["effective"] == 2
    assert [r["rank"] for r in results["ranks"]] == [0, 1]
    for r in results["ranks"]:
        assert r["host"] and r["cpu_affinity"] and r["torch_threads"] == 1
    # Each rank is pinned to one CPU, yet the job's machine is this one as a one-process job
    # sees it, so ranked and other layouts pair in the tables.
    here = this_machine().as_dict()
    assert record["machine"] == here
    assert [r["machine"]["cpus"] for r in results["ranks"]] == [here["cpus"]] * 2
    steps = 4  # 100 digits in batches of 30
    assert len(results["step_comm_s"]) == len(results["step_compute_s"]) == steps
    assert all(c >= 0 for c in results["step_comm_s"]) and results["comm_s"] > 0
    assert 0 < results["comm_share"] < 1
    assert record["interference"] is not None
    assert result.rows[0]["images"] == 100


@pytest.mark.slow  # seconds: spawns processes or trains
def test_classify_ranks_mode_writes_what_sequential_writes(weights, tmp_path):
    from cnnpar import classify

    out = tmp_path / "ranks"
    done = subprocess.run(
        [sys.executable, "-m", "cnnpar", "classify", f"--weights={weights}", "--rows=7",
         "--cols=9", "--mode=ranks", "--ranks=2", "--threads=1", "--batch-size=8",
         f"--timing-lock={tmp_path / 'lock'}", f"--out={out}"],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "mode: ranks (2 ranks, 2 processes × 1 torch thread" in done.stdout
    sequential = classify.run(
        classify.ClassifyConfig(weights=weights, rows=7, cols=9, batch_size=8, timing_lock=None)
    )
    saved = np.load(out / "predictions.npz")
    assert np.array_equal(saved["pred"], sequential.pred)
    record = json.loads((out / "run.json").read_text())
    results = record["results"]
    assert [r["rank"] for r in results["ranks"]] == [0, 1]
    assert [r["cells"] for r in results["ranks"]] == [32, 31]  # 8 batches of 8: 4 and 4
    assert len(results["repeat_comm_s"]) == 1 and results["comm_s"] >= 0
    assert record["parallelism"]["processes"] == 2
    assert record["parallelism"]["requested"] == record["parallelism"]["effective"] == 2
    assert record["params"]["ranks"] == 2
    assert record["machine"] == this_machine().as_dict()
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["predictions.npz", "result.csv", "mask.png", "run.json"]
    )


def test_an_srun_task_left_every_cpu_pins_itself_to_its_share():
    """A cluster without task binding gives each task the whole allocation: local task 1 of
    1-thread tasks takes the second CPU (in a child, so this process keeps its CPUs)."""
    code = (
        "import os; from cnnpar import ranks; ranks._confine_task(1, 1); "
        "print(sorted(os.sched_getaffinity(0)))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert json.loads(done.stdout) == [sorted(os.sched_getaffinity(0))[1]]
