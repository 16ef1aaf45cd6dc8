"""Mosaic classification: mode agreement, labels, accuracy, timing split, errors, the mask."""

from __future__ import annotations

import csv
import itertools
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from cnnpar import classify, cli, registry
from cnnpar.classify import runners
from cnnpar.data import load_mnist
from cnnpar.measure import timing
from cnnpar.mosaic import Mosaic, make_mosaic, mask_geometry, render_mask
from cnnpar.nets.mosaicnet import MosaicNet
from cnnpar.nets.torch_step import to_input
from cnnpar.record import RECORD_NAME, RunRecord

ROWS, COLS, SEED = 20, 30, 3
CONTRACT_COLUMNS = [
    "mode",
    "workers",
    "batch_size",
    "rows",
    "cols",
    "cells",
    "distinct_digits",
    "startup_s",
    "classify_s",
    "total_s",
    "cells_per_s",
    "accuracy",
    "torch_threads",
]


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """classify.run pins this process's torch threads; put them back for other tests."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def cnnpar(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cnnpar.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
    )


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


# Every CPU mode, plus batch sizes and backends that change the kernels' blocking.
MODES = {
    "sequential-b1-eager": dict(mode="sequential", batch_size=1, backend="eager"),
    "sequential-b64": dict(mode="sequential", batch_size=64),
    "threads-2-b64": dict(mode="threads", workers=2, batch_size=64),
    "processes-2-b64": dict(mode="processes", workers=2, batch_size=64, repeats=2),
    "processes-2-b256-jit": dict(mode="processes", workers=2, backend="jit"),
    # 600 cells in 10 batches of 64: rank 0 takes 5 batches, rank 1 the other 4 and a part
    "ranks-2-b64": dict(mode="ranks", ranks=2, batch_size=64, repeats=2),
    # 600 cells in one batch: rank 1's shard is empty, and it still joins the gather
    "ranks-2-b1024": dict(mode="ranks", ranks=2, batch_size=1024),
}


@pytest.fixture(scope="module")
def results(weights: Path) -> dict[str, classify.Classification]:
    threads = torch.get_num_threads()
    out = {}
    for name, kwargs in MODES.items():
        cfg = classify.ClassifyConfig(weights=weights, rows=ROWS, cols=COLS, seed=SEED, **kwargs)
        out[name] = classify.run(cfg)
    torch.set_num_threads(threads)
    return out


@pytest.fixture(scope="module")
def cli_run(weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The command end to end, in processes mode with two timed repeats."""
    out = tmp_path_factory.mktemp("classify")
    done = cnnpar(
        "classify",
        f"--weights={weights}",
        f"--rows={ROWS}",
        f"--cols={COLS}",
        f"--seed={SEED}",
        "--mode=processes",
        "--workers=2",
        "--batch-size=64",
        "--repeats=2",
        f"--out={out}",
    )
    assert done.returncode == 0, done.stderr
    assert "total items classified: 600" in done.stdout
    assert "accuracy:" in done.stdout and "throughput:" in done.stdout
    return out


def test_mosaicnet_parameter_count() -> None:
    assert sum(p.numel() for p in MosaicNet().parameters()) == 950_474


@pytest.mark.slow  # seconds: spawns processes or trains
def test_all_cpu_modes_give_identical_predictions(
    results: dict[str, classify.Classification], cli_run: Path, weights: Path
) -> None:
    reference = results["sequential-b1-eager"]
    for name, r in results.items():
        assert np.array_equal(r.pred, reference.pred), name
        np.testing.assert_allclose(r.confidence, reference.confidence, rtol=1e-5)
    assert np.array_equal(np.load(cli_run / "predictions.npz")["pred"], reference.pred)
    # Identity must not hinge on near-ties: the top two logits are far apart compared with the
    # ~1e-7 rounding differences between batch sizes and backends.
    model = MosaicNet().eval()
    model.load_state_dict(torch.load(weights, weights_only=True))
    images = load_mnist("test").images
    with torch.inference_mode():
        logits = model(to_input(torch.from_numpy(images[reference.mosaic.index])))
    top2 = logits.topk(2, dim=1).values
    assert float((top2[:, 0] - top2[:, 1]).min()) > 1e-6
    assert np.array_equal(logits.argmax(dim=1).numpy(), reference.pred)


@pytest.mark.slow  # shares a module fixture that runs the command
def test_effective_threads_per_mode(results: dict[str, classify.Classification]) -> None:
    expected = {"sequential": (1, 1), "threads": (1, 2), "processes": (2, 1), "ranks": (2, 1)}
    for r in results.values():
        assert (r.processes, r.threads["torch_threads"]) == expected[r.config.mode]


@pytest.mark.slow  # shares a module fixture that runs the command
def test_ranks_mode_shards_cover_the_mosaic(results: dict[str, classify.Classification]) -> None:
    for name, cells in (("ranks-2-b64", [320, 280]), ("ranks-2-b1024", [600, 0])):
        extra = results[name].extra
        assert [r["rank"] for r in extra["ranks"]] == [0, 1], name
        assert [r["cells"] for r in extra["ranks"]] == cells, name
        assert len(extra["repeat_comm_s"]) == results[name].config.repeats, name
        assert all(r["host"] and r["cpu_affinity"] for r in extra["ranks"]), name


# --- every mode of the registry against sequential --------------------------------------------

# 35 cells in batches of 8: every worker or rank gets a share, and the last batch is partial.
TINY = dict(rows=5, cols=7, seed=SEED, batch_size=8)


def two_cores(mode: str) -> dict[str, int]:
    """The options that run `mode` on 2 cores, in its own layout (1 core if it has none)."""
    entry = registry.MODES[mode]
    if entry.ranks:
        return dict(ranks=2, threads=1)
    return dict(workers=2) if entry.parallel else {}


@pytest.fixture(scope="module")
def tiny_sequential(weights: Path, tmp_path_factory: pytest.TempPathFactory):
    lock = tmp_path_factory.mktemp("lock") / "timing.lock"
    return classify.run(
        classify.ClassifyConfig(weights=weights, mode="sequential", timing_lock=str(lock), **TINY)
    )


@pytest.mark.slow  # seconds: spawns processes or trains
@pytest.mark.parametrize(
    "mode",
    [pytest.param(m, marks=[pytest.mark.gpu] if x.gpu else []) for m, x in registry.MODES.items()],
)
def test_every_mode_matches_sequential_and_writes_its_record(
    mode: str, weights: Path, tmp_path: Path, tiny_sequential: classify.Classification
) -> None:
    out = tmp_path / "run"
    # A lock of its own: the study's machine-wide lock would queue it behind other timed runs.
    lock = str(tmp_path / "timing.lock")
    config = classify.ClassifyConfig(
        weights=weights, mode=mode, out=out, timing_lock=lock, **TINY, **two_cores(mode)
    )
    result = classify.run(config)
    assert result is not None
    assert np.array_equal(result.pred, tiny_sequential.pred)
    rtol = 1e-4 if registry.MODES[mode].gpu else 1e-5
    np.testing.assert_allclose(result.confidence, tiny_sequential.confidence, rtol=rtol)

    record = RunRecord.read(out / RECORD_NAME)
    assert (record.command, record.model) == ("classify", "mosaicnet")
    assert record.params["mode"] == mode and record.params["grid"] == "5x7"
    assert record.outputs == list(registry.CLASSIFY_OUTPUTS)
    assert all((out / name).is_file() for name in record.outputs)
    assert record.results["cells"] == 35
    assert record.parallelism.requested == config.cores
    assert record.interference is not None and record.machine is not None
    assert np.array_equal(np.load(out / "predictions.npz")["pred"], tiny_sequential.pred)


@pytest.mark.slow  # shares a module fixture that runs the command
def test_labels_are_the_true_test_labels(cli_run: Path) -> None:
    test = load_mnist("test")
    p = np.load(cli_run / "predictions.npz")
    assert np.array_equal(p["index"], make_mosaic(ROWS, COLS, SEED).index)
    assert np.array_equal(p["label"], test.labels[p["index"]])
    assert p["pred"].shape == p["confidence"].shape == (ROWS * COLS,)
    assert p["pred"].max() <= 9
    assert np.all((p["confidence"] >= 0.1 - 1e-6) & (p["confidence"] <= 1.0))


@pytest.mark.slow  # shares a module fixture that runs the command
def test_result_csv_rows_are_consistent(cli_run: Path) -> None:
    p = np.load(cli_run / "predictions.npz")
    rows = read_rows(cli_run / "result.csv")
    assert len(rows) == 2  # one per repeat
    for i, row in enumerate(rows, start=1):
        assert set(CONTRACT_COLUMNS) <= set(row)
        assert float(row["accuracy"]) == pytest.approx(np.mean(p["pred"] == p["label"]))
        assert int(row["cells"]) == int(row["distinct_digits"]) == ROWS * COLS
        assert int(row["cells_classified"]) == ROWS * COLS  # no budget: every cell
        assert row["with_replacement"] == "False"
        assert int(row["repeat"]) == i
        assert (row["processes"], row["torch_threads"]) == ("2", "1")
        startup, classify_s = float(row["startup_s"]), float(row["classify_s"])
        assert float(row["total_s"]) == pytest.approx(startup + classify_s)
        assert float(row["cells_per_s"]) == pytest.approx(ROWS * COLS / classify_s)
        assert float(row["classify_cpu_s"]) > 0


@pytest.mark.slow  # shares a module fixture that runs the command
def test_mask_png_shows_the_mosaic(cli_run: Path) -> None:
    from PIL import Image

    p = np.load(cli_run / "predictions.npz")
    rgb = np.asarray(Image.open(cli_run / "mask.png").convert("RGB")).astype(int)
    assert rgb.shape == (ROWS * 28, COLS * 28, 3)  # small grids keep 28 px per cell
    # Per-cell mean colour: green dominates where the prediction is right, red where wrong.
    cells = rgb.reshape(ROWS, 28, COLS, 28, 3).mean(axis=(1, 3)).reshape(-1, 3)
    correct = p["pred"] == p["label"]
    assert correct.any() and (~correct).any()
    assert np.all(cells[correct, 1] > cells[correct, 0])
    assert np.all(cells[~correct, 0] > cells[~correct, 1])


SLOW_WARM_UP = """
import time

from cnnpar.classify import runners

_warm_up = runners.warm_up


def slow_warm_up(*args, **kwargs):
    _warm_up(*args, **kwargs)
    time.sleep({delay})


runners.warm_up = slow_warm_up
"""


@pytest.mark.slow  # seconds: spawns processes or trains
@pytest.mark.parametrize("mode", ["processes", "sequential"])
def test_startup_is_not_counted_in_classify(
    mode: str, weights: Path, monkeypatch, tmp_path: Path
) -> None:
    """A sleep injected into engine start-up (every worker's, in processes mode) must land in
    startup_s and never in classify_s."""
    delay = 1.5
    # The same slow warm-up here and, through a sitecustomize on PYTHONPATH, in every spawned
    # worker (they start fresh interpreters, so a monkeypatch here does not reach them).
    (tmp_path / "sitecustomize.py").write_text(SLOW_WARM_UP.format(delay=delay))
    pythonpath = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    monkeypatch.setenv("PYTHONPATH", pythonpath)
    from cnnpar.classify import runners

    original = runners.warm_up

    def slow_warm_up(*args, **kwargs):
        original(*args, **kwargs)
        time.sleep(delay)

    monkeypatch.setattr(runners, "warm_up", slow_warm_up)
    workers = 2 if mode == "processes" else 1
    cfg = classify.ClassifyConfig(
        weights=weights, rows=ROWS, cols=COLS, mode=mode, workers=workers, repeats=2
    )
    result = classify.run(cfg)
    assert result.startup_s >= delay
    # 600 cells take ~0.05 s; even a loaded machine stays far under the injected delay.
    assert max(result.measurement.samples) < delay / 2
    for row in result.result_rows():
        assert row["total_s"] == pytest.approx(row["startup_s"] + row["classify_s"])


@pytest.mark.slow  # seconds: spawns processes or trains
def test_a_worker_that_dies_mid_run_ends_the_run_with_one_line(
    weights: Path, tmp_path: Path
) -> None:
    # Every chunk a worker is given kills it, as SIGKILL or the OOM killer would.
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import os\nfrom cnnpar.classify import runners\n\n"
        "def _worker_chunk(*args):\n    os._exit(9)\n\n"
        "_worker_chunk.__module__ = runners.__name__\n"
        "runners._worker_chunk = _worker_chunk\n"
    )
    pythonpath = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    done = cnnpar(
        "classify",
        f"--weights={weights}",
        "--rows=4",
        "--cols=5",
        "--mode=processes",
        "--workers=2",
        f"--out={tmp_path / 'out'}",
        env={"PYTHONPATH": pythonpath},
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "cnnpar classify: error: a worker process died while classifying "
        "(killed, or out of memory?)"
    ]
    assert not (tmp_path / "out" / "run.json").exists()


# --- a time budget -----------------------------------------------------------------------------


def units(mode: str) -> int:
    """Batches a budgeted run classifies at least: one per worker process or rank."""
    layout = two_cores(mode)
    entry = registry.MODES[mode]
    return (
        layout.get("ranks", 1)
        if entry.ranks
        else entry.worker_processes(layout.get("workers", 1)) or 1
    )


@pytest.mark.slow  # seconds: spawns processes or trains
@pytest.mark.parametrize(
    "mode",
    [pytest.param(m, marks=[pytest.mark.gpu] if x.gpu else []) for m, x in registry.MODES.items()],
)
def test_every_mode_stops_on_a_spent_budget_after_one_batch_per_worker(
    mode: str, weights: Path, tmp_path: Path, tiny_sequential: classify.Classification
) -> None:
    """A budget spent by the first batch: each worker or rank classifies exactly one batch,
    together the whole batches from cell 0, and the run makes no second repeat."""
    out = tmp_path / "run"
    config = classify.ClassifyConfig(
        weights=weights,
        mode=mode,
        out=out,
        timing_lock=str(tmp_path / "timing.lock"),
        time_budget=1e-9,
        repeats=3,
        **TINY,
        **two_cores(mode),
    )
    result = classify.run(config)
    assert result is not None
    n = min(35, units(mode) * TINY["batch_size"])  # 35 cells in batches of 8
    assert result.classified == n and result.repeat_cells == [n]
    assert len(result.measurement.samples) == 1
    assert np.array_equal(result.pred, tiny_sequential.pred[:n])
    rtol = 1e-4 if registry.MODES[mode].gpu else 1e-5
    np.testing.assert_allclose(result.confidence, tiny_sequential.confidence[:n], rtol=rtol)
    assert result.accuracy == pytest.approx(np.mean(result.pred == result.label))

    record = RunRecord.read(out / RECORD_NAME)
    assert record.params["time_budget"] == 1e-9
    assert (record.results["cells"], record.results["cells_classified"]) == (35, n)
    assert record.results["repeat_cells"] == [n]
    saved = np.load(out / "predictions.npz")
    assert np.array_equal(saved["index"], result.mosaic.index[:n])
    assert np.array_equal(saved["pred"], result.pred) and len(saved["label"]) == n
    (row,) = read_rows(out / "result.csv")
    assert (int(row["cells"]), int(row["cells_classified"])) == (35, n)
    assert float(row["cells_per_s"]) == pytest.approx(n / float(row["classify_s"]))
    # The cells the run did not classify are flat neutral grey in the mask; the others not.
    from PIL import Image

    rgb = np.asarray(Image.open(out / "mask.png").convert("RGB")).astype(int)
    cells = rgb.reshape(5, 28, 7, 28, 3).transpose(0, 2, 1, 3, 4).reshape(35, -1, 3)
    assert np.all(cells[n:] == 128)
    assert not np.all(cells[:n] == 128, axis=(1, 2)).any()


class BatchClock:
    """`time` for the runner and the timing loop: one second passes per batch classified (at
    its start), so where a budget stops is known exactly whatever the machine is doing."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now

    def process_time(self) -> float:
        return 0.0


@pytest.fixture
def batch_clock(monkeypatch) -> BatchClock:
    clock = BatchClock()
    batches = Mosaic.batches

    def timed_batches(self: Mosaic, *args: object, **kwargs: object):
        for batch in batches(self, *args, **kwargs):
            clock.now += 1.0
            yield batch

    monkeypatch.setattr(Mosaic, "batches", timed_batches)
    monkeypatch.setattr(runners, "time", clock)
    monkeypatch.setattr(timing, "time", clock)
    return clock


@pytest.mark.parametrize(
    ("budget", "repeats", "samples", "cells"),
    [
        # 5 batches a pass: a whole pass (5 s), then 2.5 s left: 3 batches, the third past it
        (7.5, 3, [5.0, 3.0], [35, 24]),
        (100.0, 2, [5.0, 5.0], [35, 35]),  # repeats cap the passes
        (0.5, 3, [1.0], [8]),  # the first batch always
        (None, 2, [5.0, 5.0], [35, 35]),  # no budget: whole passes, as many as asked
    ],
)
def test_a_budget_cycles_through_the_mosaic_in_whole_batches_from_cell_0(
    weights: Path, batch_clock: BatchClock, budget, repeats, samples, cells
) -> None:
    config = classify.ClassifyConfig(weights=weights, time_budget=budget, repeats=repeats, **TINY)
    mosaic = make_mosaic(TINY["rows"], TINY["cols"], TINY["seed"])
    runner = runners.InProcessRunner(config, mosaic, load_mnist("test").images)
    measurement, outputs = classify._timed_repeats(runner, config)
    assert measurement.samples == samples
    assert [len(pred) for pred, _, _ in outputs] == cells
    whole = outputs[0][0]
    for pred, _, _ in outputs[1:]:
        assert np.array_equal(pred, whole[: len(pred)])


def test_a_budgeted_command_says_how_many_cells_it_classified(
    weights: Path, tmp_path: Path, capsys
) -> None:
    args = [f"--weights={weights}", f"--rows={ROWS}", f"--cols={COLS}", "--batch-size=64"]
    out = tmp_path / "out"
    code = cli.main(["classify", *args, "--time-budget=1e-9", f"--out={out}"])
    assert code == 0, capsys.readouterr().err
    assert "total items classified: 64 of 600 " in capsys.readouterr().out
    assert RunRecord.read(out / RECORD_NAME).results["cells_classified"] == 64


@pytest.mark.parametrize("budget", [0.0, -1.0, float("nan"), float("inf")])
def test_a_config_s_budget_must_be_a_positive_number_of_seconds(weights: Path, budget) -> None:
    config = classify.ClassifyConfig(weights=weights, rows=2, cols=2, time_budget=budget)
    with pytest.raises(classify.ClassifyError, match="--time-budget must be a positive"):
        classify.validate(config)


def test_the_mask_of_some_cells_draws_the_rest_neutral_grey() -> None:
    mosaic = make_mosaic(4, 5, seed=1)
    images = load_mnist("test").images
    n = 7
    mask = render_mask(mosaic, images, np.ones(n, bool), np.ones(n, np.float32))
    cells = mask.reshape(4, 28, 5, 28, 3).transpose(0, 2, 1, 3, 4).reshape(20, -1, 3)
    assert np.all(cells[n:] == 128)
    assert np.all(cells[:n, :, 1] > cells[:n, :, 0])  # classified right: green
    with pytest.raises(ValueError, match="same n"):
        render_mask(mosaic, images, np.ones(21, bool), np.ones(21, np.float32))


def test_chunks_are_contiguous_whole_batches() -> None:
    bounds = classify.chunk_bounds(cells=1000, batch_size=64, chunks=8)
    assert len(bounds) == 8
    assert bounds[0][0] == 0 and bounds[-1][1] == 1000
    assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))
    assert all(lo % 64 == 0 for lo, _ in bounds)
    # More chunks asked for than there are batches: one batch per chunk.
    assert classify.chunk_bounds(cells=100, batch_size=64, chunks=8) == [(0, 64), (64, 100)]


def _bad_weights(tmp_path: Path) -> Path:
    state = MosaicNet().state_dict()
    state["classifier.5.weight"] = torch.zeros(9, 256)  # 9 classes instead of 10
    path = tmp_path / "wrong.pt"
    torch.save(state, path)
    return path


def _not_a_state_dict(tmp_path: Path) -> Path:
    path = tmp_path / "junk.pt"
    path.write_bytes(b"not a torch file")
    return path


BAD = {
    "rows 0": (["--rows=0"], "--rows must be >= 1"),
    "cols 0": (["--cols=0"], "--cols must be >= 1"),
    "workers 0": (["--mode=processes", "--workers=0"], "workers must be >= 1"),
    "batch-size 0": (["--batch-size=0"], "batch-size must be >= 1"),
    "repeats 0": (["--repeats=0"], "repeats must be >= 1"),
    "time-budget 0": (["--time-budget=0"], "--time-budget must be a positive finite number"),
    "time-budget negative": (["--time-budget=-1"], "--time-budget must be a positive finite"),
    "time-budget nan": (["--time-budget=nan"], "--time-budget must be a positive finite number"),
    "sequential with 2 workers": (["--workers=2"], "sequential mode runs one worker"),
    "missing weights": (["--weights={tmp}/missing.pt"], "not found"),
    "mismatched weights": (["--weights=<bad>"], "does not fit MosaicNet"),
    "not a state_dict": (["--weights=<junk>"], "is not a torch state_dict"),
    "unwritable out": (["--out={tmp}/file.txt/out"], "cannot create output directory"),
    "jit on cuda": (["--mode=cuda", "--backend=jit"], "runs on the CPU only"),
    "ranks without mode ranks": (["--ranks=2"], "--ranks and --threads apply to --mode ranks"),
    "ranks x threads above the CPUs": (
        ["--mode=ranks", "--ranks=2", f"--threads={len(os.sched_getaffinity(0))}"],
        "threads, more than the",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_arguments_exit_2_with_one_line(
    case: str, weights: Path, tmp_path: Path, capsys
) -> None:
    extra, message = BAD[case]
    (tmp_path / "file.txt").write_text("a file, not a directory")
    substitutions = {
        "{tmp}": str(tmp_path),
        "<bad>": str(_bad_weights(tmp_path)),
        "<junk>": str(_not_a_state_dict(tmp_path)),
    }
    args = {"--weights": str(weights), "--rows": "4", "--cols": "5", "--out": f"{tmp_path}/o"}
    for item in extra:
        for old, new in substitutions.items():
            item = item.replace(old, new)
        key, value = item.split("=", 1)
        args[key] = value
    code = cli.main(["classify", *(f"{k}={v}" for k, v in args.items())])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("cnnpar classify: error: ")
    assert message in err[0]
    out = Path(args["--out"])
    assert not out.exists() or not any(out.iterdir())  # nothing written, not even half


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_cuda_mode_without_a_gpu_fails_clearly(weights: Path, tmp_path: Path, capsys) -> None:
    args = ["classify", f"--weights={weights}", "--rows=2", "--cols=2", "--mode=cuda"]
    assert cli.main([*args, f"--out={tmp_path}"]) == 2
    assert "cuda mode needs a CUDA GPU" in capsys.readouterr().err


@pytest.mark.gpu
def test_cuda_mode_matches_cpu(
    results: dict[str, classify.Classification], weights: Path, tmp_path: Path
) -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    done = cnnpar(
        "classify",
        f"--weights={weights}",
        f"--rows={ROWS}",
        f"--cols={COLS}",
        f"--seed={SEED}",
        "--mode=cuda",
        f"--out={tmp_path}",
    )
    assert done.returncode == 0, done.stderr
    gpu = np.load(tmp_path / "predictions.npz")
    cpu = results["sequential-b64"]
    assert np.array_equal(gpu["pred"], cpu.pred)
    np.testing.assert_allclose(gpu["confidence"], cpu.confidence, rtol=1e-4)


@pytest.mark.parametrize(
    ("rows", "cols", "expected"),
    [(20, 30, (560, 840)), (200, 300, (1400, 2100)), (1000, 1000, (4000, 4000))],
)
def test_mask_geometry(rows: int, cols: int, expected: tuple[int, int]) -> None:
    px, per_px = mask_geometry(rows, cols)
    assert per_px == 1
    assert (rows * px, cols * px) == expected


def test_mask_is_bounded_for_big_grids() -> None:
    images = load_mnist("test").images
    rng = np.random.default_rng(0)
    for rows, cols, expected in [(1000, 1000, (4000, 4000)), (600, 5000, (300, 2500))]:
        mosaic = make_mosaic(rows, cols, seed=1)
        correct = rng.random(mosaic.cells) < 0.5
        confidence = rng.random(mosaic.cells, dtype=np.float32)
        mask = render_mask(mosaic, images, correct, confidence)
        assert mask.dtype == np.uint8
        assert mask.shape == (*expected, 3)
        assert max(mask.shape[:2]) <= 4096
