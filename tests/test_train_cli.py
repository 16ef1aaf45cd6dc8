"""`cnnpar train` and `cnnpar engines`: the files written, their contents, and the errors."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest

import cnnpar.train as train_module
from cnnpar import cli, registry
from cnnpar.nets import tinycnn
from cnnpar.nets.tinycnn import spec
from cnnpar.record import SCHEMA_VERSION, RunRecord
from cnnpar.train import METRIC_FIELDS

SMALL = ["--filters", "2", "--batch-size", "32", "--train-size", "256", "--test-size", "200"]


def train(tmp_path, *extra: str, name: str = "run") -> tuple[int, os.PathLike]:
    out = tmp_path / name
    code = cli.main(["train", "--model", "tinycnn", *SMALL, "--out", str(out), *extra])
    return code, out


class FakeClock:
    """`time` for cnnpar.train: perf_counter moves `tick` seconds at every read, and `take(s)`
    moves it by s, so how long training "took" follows from what the program did, not from how
    fast this machine did it."""

    def __init__(self, tick: float = 0.0) -> None:
        self.now, self.tick = 0.0, tick

    def perf_counter(self) -> float:
        self.now += self.tick
        return self.now

    def take(self, seconds: float) -> None:
        self.now += seconds


def load_weights(path) -> dict[str, np.ndarray]:
    with np.load(path) as npz:
        return {k: npz[k] for k in npz.files}


def test_train_writes_the_run_directory(tmp_path, capsys):
    code, out = train(tmp_path, "--engine", "numpy", "--epochs", "2", "--seed", "4")
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "metrics.csv",
        "run.json",
        "weights_final.npz",
        "weights_init.npz",
    ]
    init, final = load_weights(out / "weights_init.npz"), load_weights(out / "weights_final.npz")
    expected_init = spec.init_params(2, seed=4)
    for key in spec.PARAM_KEYS:
        assert init[key].dtype == final[key].dtype == np.float32
        assert final[key].shape == spec.param_shapes(2)[key]
        np.testing.assert_array_equal(init[key], expected_init[key])
    assert not np.allclose(init["fc_w"], final["fc_w"])

    with (out / "metrics.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0]) == METRIC_FIELDS
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    for row in rows:
        seconds, ips = float(row["seconds"]), float(row["images_per_s"])
        assert seconds > 0 and ips == pytest.approx(256 / seconds)
        assert 0 <= float(row["train_acc"]) <= 1 and 0 <= float(row["test_acc"]) <= 1
        assert float(row["train_loss"]) > 0 and float(row["test_loss"]) > 0
    assert float(rows[1]["train_loss"]) < float(rows[0]["train_loss"])

    run = RunRecord.read(out / "run.json")
    assert json.loads((out / "run.json").read_text())["schema_version"] == SCHEMA_VERSION
    assert run.command == "train" and run.model == "tinycnn"
    assert run.params["engine"] == "numpy" and run.params["filters"] == 2
    assert run.params["lr"] == 0.05 and run.params["shuffle"] is True
    assert run.parallelism.requested == 1 and run.parallelism.effective == 1
    threads = run.parallelism.threads
    # numba's pool is read only where it started: the numpy engine does not start it
    assert "numba_threads" in threads and threads["torch_threads"] >= 1
    assert run.environment["malloc"] and run.environment["cpu_model"]
    assert run.results["flops_per_image"] == spec.flops_per_image(2)
    assert run.results["final_test_acc"] == pytest.approx(float(rows[-1]["test_acc"]))
    assert run.outputs == ["weights_init.npz", "weights_final.npz", "metrics.csv"]
    assert "epoch 2:" in capsys.readouterr().out


@pytest.mark.slow  # seconds: spawns processes or trains
def test_same_seed_same_weights_and_engines_agree(tmp_path):
    runs = {
        name: train(tmp_path, "--engine", engine, "--epochs", "1", name=name)
        for name, engine in (("a", "numpy"), ("b", "numpy"), ("numba", "numba"))
    }
    assert all(code == 0 for code, _ in runs.values())
    a, b, nb = (load_weights(runs[k][1] / "weights_final.npz") for k in ("a", "b", "numba"))
    for key in spec.PARAM_KEYS:
        np.testing.assert_array_equal(a[key], b[key])
        np.testing.assert_allclose(nb[key], a[key], rtol=1e-4, atol=1e-5)


@pytest.mark.slow  # seconds: spawns processes or trains
def test_shuffle_changes_the_batches(tmp_path):
    _, shuffled = train(tmp_path, "--engine", "numpy", "--epochs", "1", name="s")
    _, ordered = train(
        tmp_path, "--engine", "numpy", "--epochs", "1", "--shuffle", "false", name="o"
    )
    a = load_weights(shuffled / "weights_final.npz")["fc_w"]
    b = load_weights(ordered / "weights_final.npz")["fc_w"]
    assert not np.allclose(a, b)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--filters", "0"], "--filters must be >= 1"),
        (["--batch-size", "0"], "--batch-size must be >= 1"),
        (["--lr", "0"], "--lr must be a positive"),
        (["--lr", "-0.1"], "--lr must be a positive"),
        (["--lr", "nan"], "--lr must be a positive"),
        (["--epochs", "0"], "--epochs must be >= 1"),
        (["--threads", "0"], "--threads must be >= 1"),
        (["--train-size", "0"], "--train-size must be >= 1"),
        (["--train-size", "60001"], "--train-size must be in 1..60000"),
        (["--test-size", "10001"], "--test-size must be in 1..10000"),
        (["--engine", "jax"], "--engine invalid choice: 'jax'"),
        (["--seed", "-1"], "--seed must be >= 0"),
    ],
)
def test_bad_arguments_exit_2_with_one_line_and_no_files(tmp_path, capsys, args, message):
    out = tmp_path / "out"
    code = cli.main(["train", "--engine", "numpy", *SMALL, "--out", str(out), *args])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("cnnpar train: error: ") and message in err
    assert err.count("\n") == 1
    assert not out.exists()


def test_unwritable_out_dir_exits_2(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    code = cli.main(["train", "--engine", "numpy", *SMALL, "--out", str(blocker / "run")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--out" in err
    assert blocker.read_text() == "not a directory"


def test_mosaicnet_refuses_tinycnn_engines(tmp_path, capsys):
    out = tmp_path / "m"
    code = cli.main(["train", "--model", "mosaicnet", "--engine", "numba", "--out", str(out)])
    assert code == 2
    assert "use --engine torch or torch-cuda" in capsys.readouterr().err
    assert not out.exists()


def test_unavailable_engine_exits_2(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("NUMBA_ENABLE_CUDASIM", raising=False)
    if tinycnn.unavailable_reason("cuda") is None:
        pytest.skip("a CUDA GPU is present")
    out = tmp_path / "c"
    code = cli.main(["train", "--engine", "cuda", *SMALL, "--out", str(out)])
    assert code == 2
    assert capsys.readouterr().err == (
        "cnnpar train: error: engine 'cuda' needs a CUDA GPU; none found "
        "(set NUMBA_ENABLE_CUDASIM=1 to simulate)\n"
    )
    assert not out.exists()


def test_engines_command_lists_availability(capsys):
    assert cli.main(["engines", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert list(status) == list(registry.ENGINES)
    assert status["numpy"] == status["numba"] == status["torch"] == "available"


# --- several thread counts in one process, interleaved -----------------------------------


@pytest.mark.slow  # seconds: spawns processes or trains
@pytest.mark.parametrize("engine", ["numba", "torch"])
def test_interleaved_thread_counts_write_one_run_each(tmp_path, capsys, monkeypatch, engine):
    # Training's clock ticks 1 ms per read (about one read per step): each side trains the
    # same number of steps, in the same windows, on any machine.
    monkeypatch.setattr(train_module, "time", FakeClock(tick=0.001))
    budget = 0.3
    code, _ = train(
        tmp_path,
        "--engine", engine, "--threads", "1,2", "--time-budget", str(budget), "--epochs", "500",
        name="threads~{threads}",
    )  # fmt: skip
    assert code == 0
    runs = {t: RunRecord.read(tmp_path / f"threads~{t}" / "run.json") for t in (1, 2)}
    inits = [load_weights(tmp_path / f"threads~{t}" / "weights_init.npz") for t in (1, 2)]
    for key in spec.PARAM_KEYS:  # the same starting point on both sides of the ratio
        np.testing.assert_array_equal(inits[0][key], inits[1][key])
    cpus = len(os.sched_getaffinity(0))
    for threads, run in runs.items():
        assert run.params["threads"] == threads and run.params["time_budget"] == budget
        assert run.parallelism.requested == threads
        assert run.parallelism.effective == min(threads, cpus)
        library = "numba_threads" if engine == "numba" else "torch_threads"
        assert run.parallelism.threads[library] == threads  # as it took effect in its windows
        interleaved = run.results["interleaved"]
        assert interleaved["threads"] == [1, 2] and interleaved["window_s"] > 0
        # Each side trained its own budget, in windows that took turns.
        assert interleaved["rounds"] >= budget / interleaved["window_s"]
        assert run.results["train_seconds"] >= budget
        with (tmp_path / f"threads~{threads}" / "metrics.csv").open() as fh:
            rows = list(csv.DictReader(fh))
        assert sum(int(r["images"]) for r in rows) == run.results["train_images"]
        assert float(rows[-1]["test_acc"]) > 0.5  # it learned: 256 digits, several epochs
    out = capsys.readouterr().out
    assert "1 threads:" in out and "2 threads:" in out


def test_interleaved_windows_count_only_their_own_time(monkeypatch):
    """Time spent while a window is paused (another thread count's turn) is not counted. Each
    step takes 1/64 s on a fake clock, a pause 1/4 s: a 0.5 s budget is 32 steps in windows of
    4 steps (1/16 s), paused after each window but the last."""
    from cnnpar.data import load_mnist
    from cnnpar.train import _first, train_windows

    step_s, pause_s = 1 / 64, 1 / 4
    clock = FakeClock()
    monkeypatch.setattr(train_module, "time", clock)
    data = _first(load_mnist("train"), 256)
    engine = tinycnn.get_engine("numpy").from_params(spec.init_params(2, seed=0), lr=0.05)
    train_step = engine.train_step

    def timed_step(start: int, stop: int) -> None:
        train_step(start, stop)
        clock.take(step_s)

    engine.train_step = timed_step
    windows = train_windows(
        engine, data, data, batch_size=32, epochs=20, seed=0, shuffle=False,
        progress=False, time_budget=0.5, window_s=4 * step_s,
    )  # fmt: skip
    paused = 0
    while True:
        try:
            next(windows)
        except StopIteration as done:
            rows = done.value
            break
        clock.take(pause_s)  # the other thread count's window
        paused += 1
    timed = sum(r["seconds"] for r in rows)
    assert paused == 32 // 4 - 1
    assert timed == pytest.approx(32 * step_s) == pytest.approx(0.5)
    assert sum(r["images"] for r in rows) == 32 * 32
    assert clock.now == pytest.approx(timed + paused * pause_s)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--engine", "numpy", "--time-budget", "1"], "interleave in one process only on numba"),
        (["--engine", "numba"], "need --time-budget"),
        (["--engine", "numba", "--time-budget", "1", "--threads", "1,1"], "lists a count twice"),
        (["--engine", "numba", "--time-budget", "1", "--threads", "1,x"], "is not an integer"),
    ],
)
def test_interleaving_that_cannot_work_exits_2_with_one_line(tmp_path, capsys, args, message):
    threads = [] if "--threads" in args else ["--threads", "1,2"]
    code, _ = train(tmp_path, *threads, *args, name="threads~{threads}")
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert list(tmp_path.iterdir()) == []


def test_interleaving_needs_a_threads_field_in_out(tmp_path, capsys):
    code, out = train(tmp_path, "--engine", "numba", "--threads", "1,2", "--time-budget", "1")
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "{threads} in --out" in err, err
    assert not out.exists()


def test_one_thread_count_fills_the_threads_field_of_out(tmp_path):
    """A workflow whose sweep has one thread count passes the same --out template."""
    code, _ = train(tmp_path, "--engine", "numba", "--threads", "2", name="threads~{threads}")
    assert code == 0
    assert RunRecord.read(tmp_path / "threads~2" / "run.json").params["threads"] == 2
    assert not (tmp_path / "threads~{threads}").exists()
