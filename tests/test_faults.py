"""Faults and extremes: every way a run can be stopped or refused ends it within seconds, with
one line on stderr and the documented exit code (`cnnpar --help`), no traceback, no process
left running, and no run directory or temporary file left behind.

Faults are injected from outside: SIGKILL on the worker processes (psutil), SIGINT and SIGTERM
to the whole process group as a terminal or a scheduler sends them, a 2 MB tmpfs that fills up,
and a sitecustomize on PYTHONPATH that marks (or kills) the spawned workers mid-run.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import torch
from mounts import tmpfs
from processes import left_running
from workflow_helpers import REPO, SNAKEFILE, TINY

from cnnpar import cli, io, limits
from cnnpar.measure.interference import timing_lock

BIG = ["--rows=300", "--cols=300"]  # 90,000 cells: each chunk's result is ~56 KB on its pipe
START_TIMEOUT_S = 180  # spawned workers import torch: slow on a busy 2-core machine
STOP_WITHIN_S = 20  # from the fault to the exit; typically 1-2 s
DIED_MID_RUN = (
    "cnnpar classify: error: a worker process died while classifying (killed, or out of memory?)"
)

# Loaded by every Python process on PYTHONPATH; acts only in spawned workers, on request.
SITECUSTOMIZE = """
import os
import sys

if "--multiprocessing-fork" in sys.argv:
    if os.environ.get("CNNPAR_TEST_MARK_DIR"):
        # Mark each worker that has started classifying.
        from cnnpar.classify import runners

        _chunk = runners._worker_chunk

        def _marked(*args):
            mark = os.path.join(os.environ["CNNPAR_TEST_MARK_DIR"], str(os.getpid()))
            open(mark, "w").close()
            return _chunk(*args)

        runners._worker_chunk = _marked
    if os.environ.get("CNNPAR_TEST_DIE_MID_SEND"):
        # Die halfway through sending a large message (a chunk's result): the header promises
        # the whole message, half of it follows.
        import signal
        import struct
        from multiprocessing import connection

        _send_bytes = connection.Connection._send_bytes

        def _die_mid_send(self, buf):
            if len(buf) > 16384:
                self._send(struct.pack("!i", len(buf)) + bytes(buf[: len(buf) // 2]))
                os.kill(os.getpid(), signal.SIGKILL)
            _send_bytes(self, buf)

        connection.Connection._send_bytes = _die_mid_send
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("site")
    (path / "sitecustomize.py").write_text(SITECUSTOMIZE)
    return path


@pytest.fixture(autouse=True)
def _restore_torch_threads() -> Iterator[None]:
    """In-process runs pin this process's torch threads; put them back for other tests."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


# --- helpers -----------------------------------------------------------------------------


def _env(site: Path | None = None, **extra: str) -> dict[str, str]:
    """This environment (so the child imports the cnnpar under test), the sitecustomize first."""
    paths = [str(site)] if site else []
    pythonpath = os.pathsep.join(filter(None, [*paths, os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": pythonpath, **extra}


def _cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "cnnpar", *args]


def _run(*args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        _cmd(*args), capture_output=True, text=True, timeout=timeout, env=_env(**env)
    )


def _error_lines(stderr: str) -> list[str]:
    """stderr without the allowed warning lines; never a traceback."""
    assert "Traceback" not in stderr, stderr
    return [line for line in stderr.splitlines() if not line.startswith("cnnpar: warning:")]


def _one_line(stderr: str) -> str:
    lines = _error_lines(stderr)
    assert len(lines) == 1, stderr
    return lines[0]


def _assert_nothing_left(parent: Path, name: str) -> None:
    """No run directory `name` in `parent`, and no temporary or probe directory either."""
    if not parent.exists():
        return
    left = [p.name for p in parent.iterdir() if p.name == name or p.name.startswith(".")]
    assert left == [], f"left behind in {parent}: {left}"


def _descendants(proc: psutil.Process) -> list[psutil.Process]:
    with contextlib.suppress(psutil.Error):
        return proc.children(recursive=True)
    return []


def _workers(proc: psutil.Process) -> list[psutil.Process]:
    found = []
    for child in _descendants(proc):
        with contextlib.suppress(psutil.Error):
            if "--multiprocessing-fork" in child.cmdline():
                found.append(child)
    return found


def _wait_for(condition, timeout: float, what: str, proc: subprocess.Popen):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (value := condition()) is not None and value is not False:
            return value
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"cnnpar exited ({proc.returncode}) before {what}: {err or out}")
        time.sleep(0.02)
    _kill_group(proc)
    pytest.fail(f"timed out waiting for {what}")


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Classify:
    """`cnnpar classify --mode processes --workers 2` in its own session, as from a terminal."""

    def __init__(self, weights: Path, out: Path, site: Path, **env: str) -> None:
        self.out, self.marks = out, out.parent / f"{out.name}-marks"
        self.marks.mkdir()
        args = [f"--weights={weights}", *BIG, "--mode=processes", "--workers=2", f"--out={out}"]
        self.proc = subprocess.Popen(
            _cmd("classify", *args),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # its own process group, which a terminal signals whole
            # A terminal's foreground job takes Ctrl-C; a test run launched in the background
            # (`pytest &` without job control) would pass SIGINT on ignored, as POSIX asks.
            preexec_fn=_default_sigint,
            env=_env(site, CNNPAR_TEST_MARK_DIR=str(self.marks), **env),
        )
        self.ps = psutil.Process(self.proc.pid)
        self.tree: list[psutil.Process] = []

    def wait_for_workers(self) -> list[psutil.Process]:
        workers = _wait_for(
            lambda: len(w := _workers(self.ps)) == 2 and w, 60, "two workers", self.proc
        )
        self.tree = _descendants(self.ps)
        return workers

    def wait_for_classifying(self) -> None:
        self.wait_for_workers()
        _wait_for(lambda: any(self.marks.iterdir()), START_TIMEOUT_S, "classifying", self.proc)
        self.tree = _descendants(self.ps)

    def finish(self) -> tuple[int, str, float]:
        """Exit code, stderr and seconds to exit; then no descendant may survive."""
        start = time.monotonic()
        try:
            _, err = self.proc.communicate(timeout=STOP_WITHIN_S * 3)
        except subprocess.TimeoutExpired:
            _kill_group(self.proc)
            pytest.fail("cnnpar did not exit after the fault: it hangs")
        seconds = time.monotonic() - start
        left = left_running(self.tree)
        assert left == [], f"left running: {left}"
        _assert_nothing_left(self.out.parent, self.out.name)
        return self.proc.returncode, err, seconds


# --- worker processes never hang the parent ----------------------------------------------


@pytest.mark.slow  # seconds: spawns processes or trains
def test_a_worker_killed_while_starting_up(weights: Path, site: Path, tmp_path: Path) -> None:
    run = Classify(weights, tmp_path / "out", site)
    run.wait_for_workers()[0].kill()  # while it imports torch or warms up
    code, err, seconds = run.finish()
    assert code == 2
    assert _one_line(err) == (
        "cnnpar classify: error: a worker process died while starting up "
        "(killed, or out of memory?)"
    )
    assert seconds < STOP_WITHIN_S


@pytest.mark.slow  # seconds: spawns processes or trains
def test_a_worker_killed_mid_run(weights: Path, site: Path, tmp_path: Path) -> None:
    run = Classify(weights, tmp_path / "out", site)
    run.wait_for_classifying()
    _workers(run.ps)[0].kill()
    code, err, seconds = run.finish()
    assert code == 2
    assert _one_line(err) == DIED_MID_RUN
    assert seconds < STOP_WITHIN_S


@pytest.mark.slow  # seconds: spawns processes or trains
def test_a_worker_killed_halfway_through_sending_a_result(
    weights: Path, site: Path, tmp_path: Path
) -> None:
    """The hardest moment: a reader that waits for the rest of a message would wait forever."""
    run = Classify(weights, tmp_path / "out", site, CNNPAR_TEST_DIE_MID_SEND="1")
    run.wait_for_workers()
    code, err, _ = run.finish()
    assert code == 2
    assert _one_line(err) == DIED_MID_RUN


@pytest.mark.slow  # seconds: spawns processes or trains
@pytest.mark.parametrize(
    ("when", "signum", "code", "line"),
    [
        ("starting up", signal.SIGINT, 130, "cnnpar: interrupted"),
        ("classifying", signal.SIGINT, 130, "cnnpar: interrupted"),
        ("classifying", signal.SIGTERM, 143, "cnnpar: terminated"),
    ],
)
def test_a_signal_to_the_process_group(
    when: str, signum: int, code: int, line: str, weights: Path, site: Path, tmp_path: Path
) -> None:
    """Ctrl-C (or a scheduler's SIGTERM) reaches the parent and every worker at once: the
    parent alone reacts, kills the workers, and no worker prints a traceback."""
    run = Classify(weights, tmp_path / "out", site)
    if when == "starting up":
        run.wait_for_workers()
        time.sleep(0.5)  # inside the workers' start-up: importing torch
    else:
        run.wait_for_classifying()
    os.killpg(run.proc.pid, signum)
    exit_code, err, seconds = run.finish()
    assert exit_code == code
    assert err.strip().splitlines() == [line], err
    assert seconds < STOP_WITHIN_S


def test_only_the_config_crosses_the_spawn_pipe(weights: Path) -> None:
    """Workers rebuild the mosaic from rows, cols and seed: what they are started with is
    small whatever the mosaic's size."""
    import pickle

    from cnnpar.classify import ClassifyConfig

    cfg = ClassifyConfig(weights=weights, rows=10_000, cols=10_000, mode="processes", workers=2)
    assert len(pickle.dumps(cfg)) < 2000


# --- I/O errors are one line; a run directory is all or nothing ----------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MB tmpfs, unmounted afterwards (needs root)."""
    yield from tmpfs(tmp_path / "disk", "size=2m")


@pytest.fixture
def read_only_disk(tmp_path: Path) -> Iterator[Path]:
    yield from tmpfs(tmp_path / "ro", "size=2m,ro")


def _fill(disk: Path, leave: int) -> None:
    """Fill `disk` up to its last `leave` bytes."""
    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    (disk / "filler").write_bytes(b"\0" * max(0, free - leave))


@pytest.mark.slow  # seconds: spawns processes or trains
def test_classify_on_a_full_disk(weights: Path, small_disk: Path) -> None:
    out = small_disk / "run"
    done = _run("classify", f"--weights={weights}", *BIG, f"--out={out}")
    assert done.returncode == 1
    line = _one_line(done.stderr)
    assert line.startswith(f"cnnpar classify: error: cannot write {out}/"), line
    assert line.endswith(": No space left on device"), line
    assert list(small_disk.iterdir()) == []


@pytest.mark.slow  # seconds: spawns processes or trains
@pytest.mark.parametrize("model", ["tinycnn", "mosaicnet"])
def test_train_on_a_full_disk(model: str, small_disk: Path) -> None:
    # model.pt (3.8 MB) does not fit in 2 MB; TinyCNN's weights (F=64) need a fuller disk.
    if model == "tinycnn":
        _fill(small_disk, leave=64 * 1024)
    out = small_disk / "run"
    extra = ["--engine=numpy", "--filters=64"] if model == "tinycnn" else []
    done = _run(
        "train",
        f"--model={model}",
        *extra,
        "--train-size=256",
        "--test-size=100",
        "--epochs=1",
        f"--out={out}",
    )
    assert done.returncode == 1
    line = _one_line(done.stderr)
    name = "model.pt" if model == "mosaicnet" else "weights_"
    assert line.startswith(f"cnnpar train: error: cannot write {out}/{name}"), line
    assert line.endswith(": No space left on device"), line
    assert not out.exists()
    assert sorted(p.name for p in small_disk.iterdir()) == (["filler"] if extra else [])


LOGGED = REPO / "workflow" / "scripts" / "logged.sh"
FAILING = [
    "sh",
    "-c",
    "echo 'cnnpar train: error: cannot write x: No space left on device' >&2; exit 3",
]


def test_a_job_whose_log_the_full_disk_lost_says_so_on_the_terminal(small_disk: Path) -> None:
    """Under the workflow a job's output goes to its log; when the disk is full the error line
    is lost with it, so the job's wrapper names the cause on its own stderr."""
    _fill(small_disk, leave=0)
    log = small_disk / "job.log"
    done = subprocess.run(["bash", str(LOGGED), str(log), *FAILING], capture_output=True, text=True)
    assert done.returncode == 3
    assert log.exists() and log.stat().st_size == 0
    line = _one_line(done.stderr)
    assert line.startswith(f"sh failed (exit 3) and its log {log} may be missing its last lines")
    assert "0 KiB free on that disk (no space left on device?)" in line


def test_a_job_log_with_room_keeps_the_error_and_the_exit_code(tmp_path: Path) -> None:
    log = tmp_path / "job.log"
    done = subprocess.run(["bash", str(LOGGED), str(log), *FAILING], capture_output=True, text=True)
    assert (done.returncode, done.stdout, done.stderr) == (3, "", "")  # the log has it
    assert "No space left on device" in log.read_text()
    ok = subprocess.run(["bash", str(LOGGED), str(log), "true"], capture_output=True, text=True)
    assert (ok.returncode, ok.stderr, log.read_text()) == (0, "", "")


@pytest.mark.slow  # a Snakemake dry run
def test_every_timed_job_runs_through_the_log_wrapper(tmp_path: Path) -> None:
    plan = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "-d", str(tmp_path), "-n", "-p",
         "--cores", "2", "--configfile", str(TINY)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert plan.returncode == 0, plan.stderr[-2000:]
    commands = re.findall(r"^Shell command: (.*cnnpar (?:train|classify) .*)$", plan.stdout, re.M)
    assert commands, plan.stdout[-2000:]
    # Every command of a family job's line, each through the wrapper (found through the
    # environment, so moving the checkout changes no command).
    runs = [part for command in commands for part in command.split(" && ")]
    assert all(run.startswith('bash "$CNNPAR_LOGGED" ') for run in runs), runs[0]
    assert Path(LOGGED).is_file()


def test_a_read_only_out_is_refused_up_front(read_only_disk: Path, capsys) -> None:
    out = read_only_disk / "run"
    code = cli.main(["train", "--engine=numpy", "--train-size=64", f"--out={out}"])
    line = _one_line(capsys.readouterr().err)
    assert code == 2
    assert line == (
        f"cnnpar train: error: cannot create output directory {out}: Read-only file system; "
        "choose a writable --out"
    )


def test_run_directory_is_all_or_nothing(tmp_path: Path) -> None:
    out = tmp_path / "a" / "b" / "run"
    for stop in (KeyboardInterrupt, RuntimeError):
        with pytest.raises(stop), io.run_directory(out) as tmp:
            io.write_text(tmp / "half.txt", "half")
            raise stop
        assert list(tmp_path.iterdir()) == [], "the parents made for it are gone too"

    with io.run_directory(out) as tmp:
        io.write_text(tmp / "run.json", "first")
        io.write_text(tmp / "old.txt", "from the first run")
    with io.run_directory(out) as tmp:  # an earlier run is replaced whole
        io.write_text(tmp / "run.json", "second")
    assert sorted(p.name for p in out.iterdir()) == ["run.json"]
    assert (out / "run.json").read_text() == "second"
    _assert_nothing_left(out.parent, "-")

    shared = tmp_path / "shared"  # a bench's --csv directory: other files stay
    shared.mkdir()
    (shared / "notes.txt").write_text("mine")
    with io.run_directory(shared, replace=False) as tmp:
        io.write_text(tmp / "b.csv", "x\n")
        io.write_text(tmp / "run.json", "{}")
    assert sorted(p.name for p in shared.iterdir()) == ["b.csv", "notes.txt", "run.json"]


@pytest.mark.parametrize(
    ("out", "message"),
    [
        (".", "is the current directory or holds it"),
        ("{tmp}/foreign", "holds files that are not from a cnnpar run (notes.txt)"),
        ("{tmp}/bench", "holds files that are not from a cnnpar run (notes.txt)"),
        ("{tmp}/a-file/run", "a-file is not a directory"),
        ("/proc/x/run", "cannot create output directory /proc/x/run"),
    ],
)
def test_unusable_out_is_refused_before_any_work(
    out: str, message: str, tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("not a run")
    (tmp_path / "bench").mkdir()  # a bench's CSV and record beside someone's notes
    (tmp_path / "bench" / "run.json").write_text(json.dumps({"outputs": ["b.csv"]}))
    (tmp_path / "bench" / "b.csv").write_text("")
    (tmp_path / "bench" / "notes.txt").write_text("not a run")
    (tmp_path / "a-file").write_text("")
    out = out.replace("{tmp}", str(tmp_path))
    code = cli.main(["train", "--engine=numpy", "--train-size=64", f"--out={out}"])
    line = _one_line(capsys.readouterr().err)
    assert code == 2 and message in line and "--out" in line
    assert (tmp_path / "foreign" / "notes.txt").read_text() == "not a run"
    assert (tmp_path / "bench" / "notes.txt").read_text() == "not a run"


@pytest.mark.parametrize("bench", ["train", "classify"])
@pytest.mark.parametrize("where", ["/proc/x/b.csv", "/proc/b.csv", "{tmp}/a-file/b.csv", "{tmp}"])
def test_bad_csv_fails_up_front_naming_csv(bench: str, where: str, tmp_path: Path, capsys) -> None:
    (tmp_path / "a-file").write_text("")
    args = ["--blocks=1"] if bench == "train" else ["--rows=2", "--cols=2"]
    csv = where.replace("{tmp}", str(tmp_path))
    code = cli.main(["bench", bench, *args, "--csv", csv])
    captured = capsys.readouterr()
    line = _one_line(captured.err)
    assert code == 2
    assert line.startswith(f"cnnpar bench: error: --csv {csv}") and "--out" not in line, line
    assert captured.out == "", "nothing measured"
    assert not (tmp_path / "x").exists()


# --- limits up front ---------------------------------------------------------------------

TOO_MANY = str(limits.max_parallelism() + 1)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["info", "--threads=100000"], "--threads 100000 is more than"),
        (["info", f"--threads={TOO_MANY}"], f"--threads {TOO_MANY} is more than"),
        (["train", "--engine=numba", "--threads=100000"], "--threads 100000 is more than"),
        (["classify", "--mode=threads", "--workers=100000"], "--workers 100000 is more than"),
        (["classify", "--mode=processes", f"--workers={TOO_MANY}"], f"--workers {TOO_MANY} is"),
        (["bench", "classify", "--workers=100000"], "--workers 100000 is more than"),
        (["train", "--filters=100000000"], "needs about"),
        (["classify", "--rows=10000", "--cols=10001"], "more than the 100,000,000 limit"),
    ],
)
def test_extreme_counts_and_sizes_are_refused_up_front(
    argv: list[str], message: str, weights: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "out"
    if argv[0] == "classify":
        argv = _with_defaults([*argv, f"--weights={weights}"], {"--rows": "2", "--cols": "2"})
    if argv[0] in ("train", "classify"):
        argv = [*argv, f"--out={out}"]
    start = time.monotonic()
    code = cli.main(argv)
    line = _one_line(capsys.readouterr().err)
    assert code == 2 and message in line, line
    assert time.monotonic() - start < 30, "refused before any work"
    _assert_nothing_left(tmp_path, "out")


def _with_defaults(argv: list[str], defaults: dict[str, str]) -> list[str]:
    given = {a.split("=", 1)[0] for a in argv}
    return argv + [f"{k}={v}" for k, v in defaults.items() if k not in given]


def test_memory_estimates_are_refused_up_front(
    weights: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.setattr(limits, "available_memory", lambda: 10**9)  # a 1 GB machine
    out = f"--out={tmp_path / 'out'}"
    cases = {
        # 10^8 cells: the index alone takes 800 MB, in this process and in each worker
        "classify": ["classify", f"--weights={weights}", "--rows=10000", "--cols=10000", out],
        # 60,000 images in one batch: ~21 GB of MosaicNet activations
        "train": ["train", "--model=mosaicnet", "--batch-size=60000", out],
    }
    for argv in cases.values():
        assert cli.main(argv) == 2
        line = _one_line(capsys.readouterr().err)
        assert "needs about" in line and "more than the 1.0 GB available" in line, line
    assert list(tmp_path.iterdir()) == []


def test_a_batch_larger_than_the_mosaic_warms_up_on_the_mosaic(
    weights: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "out"
    argv = ["classify", f"--weights={weights}", "--rows=10", "--cols=10", f"--out={out}"]
    assert cli.main([*argv, "--batch-size=1000000000"]) == 0
    assert (out / "run.json").is_file()


@pytest.mark.slow  # seconds: spawns processes or trains
@pytest.mark.parametrize("command", ["train", "classify"])
def test_oversubscription_is_warned_about_and_recorded(
    command: str, weights: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    out = tmp_path / "out"
    argv = {
        "train": ["train", "--engine=numba", "--threads=2", "--train-size=256", "--epochs=1"],
        "classify": ["classify", f"--weights={weights}", "--rows=4", "--cols=5"],
    }[command]
    argv += ["--mode=threads", "--workers=2"] if command == "classify" else ["--test-size=100"]
    for cpus, oversubscribed in ((2, False), (1, True)):
        # a job granted `cpus` CPUs from the start (taskset, SLURM)
        monkeypatch.setattr(limits, "cpus_available", lambda cpus=cpus: cpus)
        monkeypatch.setattr(limits, "CPUS_AT_START", cpus)
        assert cli.main([*argv, f"--out={out}"]) == 0
        err = capsys.readouterr().err
        # A busy machine may also disturb the timings: that warning is not what is tested here.
        warnings = [
            line
            for line in err.splitlines()
            if line.startswith("cnnpar: warning:") and "timings are disturbed" not in line
        ]
        assert len(warnings) == oversubscribed and "Traceback" not in err
        if oversubscribed:
            assert "oversubscribed" in warnings[0] and "1 available CPU" in warnings[0]
        results = json.loads((out / "run.json").read_text())["results"]
        assert results["oversubscribed"] is oversubscribed
        assert results["cpus_available"] == cpus


# --- numerical failure is a failure ------------------------------------------------------


@pytest.mark.parametrize(
    "model_args",
    [["--engine=numba"], ["--engine=numpy"], ["--model=mosaicnet"]],
)
def test_a_nan_loss_stops_training(model_args: list[str], tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    argv = ["train", *model_args, "--lr=1e30", "--train-size=512", "--test-size=100"]
    assert cli.main([*argv, "--epochs=3", f"--out={out}"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("cnnpar train: error: training diverged: the training loss is ")
    assert "in epoch 1" in line and line.endswith("; use a smaller --lr")
    _assert_nothing_left(tmp_path, "out")


@pytest.mark.parametrize(
    ("model_args", "loss"),
    [
        # The case as reported: 4.3e29 at 9% accuracy used to exit 0.
        (["--engine=numpy", "--filters=4", "--lr=1e30", "--train-size=256"], 4.269e29),
        # A loss that blew up far less, on every engine. TinyCNN's engines agree step by step to
        # rounding, which a diverging run amplifies to a few parts in 10,000 over an epoch.
        (["--engine=numpy", "--filters=4", "--lr=100", "--train-size=512"], 192.45),
        (["--engine=numba", "--filters=4", "--lr=100", "--train-size=512"], 192.45),
        (["--engine=torch", "--filters=4", "--lr=100", "--train-size=512"], 192.45),
        # MosaicNet with Adam at a too-large step.
        (["--model=mosaicnet", "--lr=0.1", "--train-size=512", "--batch-size=16"], None),
    ],
    ids=["numpy-1e30", "numpy", "numba", "torch", "mosaicnet"],
)
def test_a_finite_loss_far_above_ln10_stops_training(
    model_args: list[str], loss: float | None, tmp_path: Path, capsys
) -> None:
    """Divergence without a NaN: an epoch's mean cross-entropy above 10 × ln 10 (training
    starts at ln 10 and moves down) is refused like a NaN, on every engine."""
    out = tmp_path / "out"
    argv = ["train", *model_args, "--batch-size=16", "--epochs=1", "--test-size=100"]
    argv += [f"--timing-lock={tmp_path / 'lock'}", f"--out={out}"]
    assert cli.main(argv) == 2
    line = _one_line(capsys.readouterr().err)
    match = re.fullmatch(
        r"cnnpar train: error: training diverged: the training loss is (\S+) "
        r"\(over 10 × ln 10 = 23\.0\) in epoch 1; use a smaller --lr",
        line,
    )
    assert match, line
    assert float(match[1]) > 23.0
    if loss is not None:
        assert float(match[1]) == pytest.approx(loss, rel=1e-3)
    _assert_nothing_left(tmp_path, "out")


# --- timed work never overlaps ------------------------------------------------------------


@pytest.mark.slow  # seconds: spawns processes or trains
def test_two_timed_runs_started_together_take_turns(tmp_path: Path) -> None:
    """Two timed runs by hand on one lock file, both started while this test holds the lock:
    each says it waits; once the lock is free, one times while the other waits through its
    whole timed region (warm-up and training), and each records its wait in its run record.
    Both wait before either starts, so which goes first is the lock's choice, and the order of
    events, not the machine's speed, bounds the waits."""
    lock = tmp_path / "timing.lock"
    argv = ["train", "--engine=numpy", "--train-size=2048", "--test-size=100", "--epochs=100"]
    argv += ["--time-budget=1.5", f"--timing-lock={lock}"]
    procs, errs = [], [tmp_path / f"{name}.err" for name in ("a", "b")]
    with timing_lock(lock, warn=lambda message: None):
        for name, err in zip(("a", "b"), errs, strict=True):
            with err.open("w") as stderr:
                cmd = _cmd(*argv, f"--out={tmp_path / name}")
                procs.append(
                    subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=stderr)
                )
        for err, proc in zip(errs, procs, strict=True):
            _wait_for(
                lambda err=err: "waiting for another timed run" in err.read_text(),
                START_TIMEOUT_S, f"{err.stem} to wait for the lock", proc,
            )  # fmt: skip
    codes = [proc.wait(timeout=180) for proc in procs]
    assert codes == [0, 0], [err.read_text() for err in errs]
    a, b = (json.loads((tmp_path / name / "run.json").read_text())["interference"]
            for name in ("a", "b"))  # fmt: skip
    assert min(a["seconds"], b["seconds"]) >= 1.0  # each trained its 1.5 s budget
    assert min(a["lock_wait_s"], b["lock_wait_s"]) > 0
    # The second to take the lock began waiting before the first took it and took it after
    # the first let go: its wait holds the first's whole timed region.
    assert a["lock_wait_s"] > b["seconds"] or b["lock_wait_s"] > a["seconds"], (a, b)
