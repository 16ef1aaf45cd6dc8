"""Every TinyCNN engine trains exactly the same network: same init, same batches, same numbers.

The numpy engine is the reference; its gradient is checked against finite differences in
float64. Each other engine must reproduce its per-step losses and final weights to
rtol 1e-4 / atol 1e-5 (F=4, B=16, 256 images, one epoch in dataset order). The numba.cuda
kernels run in numba's CUDA simulator in a subprocess (the simulator is chosen when numba.cuda
is first imported), on a smaller problem because the simulator runs every GPU thread in Python.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from cnnpar import registry
from cnnpar.data import load_mnist
from cnnpar.nets import tinycnn
from cnnpar.nets.tinycnn import numpy_engine, spec

RTOL, ATOL = 1e-4, 1e-5
FILTERS, BATCH, TRAIN_SIZE, LR = 4, 16, 256, 0.05


@pytest.fixture(scope="module")
def train_digits():
    data = load_mnist("train")
    return data.images[:TRAIN_SIZE], data.labels[:TRAIN_SIZE].astype(np.int64)


def run_engine(name, images, labels, filters=FILTERS, batch=BATCH, lr=LR, threads=2):
    """One epoch in dataset order from spec.init_params(filters, seed=0)."""
    engine = tinycnn.get_engine(name).from_params(
        spec.init_params(filters, seed=0), lr=lr, threads=threads
    )
    engine.warm_up()
    engine.load_epoch(images, labels)
    for start, stop in spec.batch_bounds(len(labels), batch):
        engine.train_step(start, stop)
    losses, correct = engine.epoch_stats()
    return losses, correct, engine.params(), engine.predict(images[:64])


@pytest.fixture(scope="module")
def reference(train_digits):
    return run_engine("numpy", *train_digits)


def assert_matches(result, reference) -> None:
    losses, correct, params, logits = result
    ref_losses, ref_correct, ref_params, ref_logits = reference
    assert losses.shape == ref_losses.shape == (spec.n_steps(TRAIN_SIZE, BATCH),)
    np.testing.assert_allclose(losses, ref_losses, rtol=RTOL, atol=ATOL)
    assert correct.sum() == pytest.approx(ref_correct.sum(), abs=2)
    for key in spec.PARAM_KEYS:
        assert params[key].dtype == np.float32
        assert params[key].shape == ref_params[key].shape
        np.testing.assert_allclose(params[key], ref_params[key], rtol=RTOL, atol=ATOL, err_msg=key)
    np.testing.assert_allclose(logits, ref_logits, rtol=RTOL, atol=1e-4)


def test_reference_learns_something(reference, train_digits):
    losses, _, params, _ = reference
    # The weights moved, and the loss of the last steps is below the first steps' ~ln 10.
    init = spec.init_params(FILTERS, seed=0)
    assert not np.allclose(params["fc_w"], init["fc_w"])
    assert losses[:2].mean() > losses[-4:].mean()
    assert np.all(np.isfinite(losses))


# --- every engine of the registry against the reference -------------------------------------

REFERENCE = "numpy"
# Engines one process steps through run_engine (a ranked engine needs its ranks started).
IN_PROCESS = [n for n, e in registry.ENGINES.items() if not e.ranks and not e.gpu]


def engine_cases():
    """(engine, threads) of every registered engine: a host-threaded one at 1 and 2 threads, a
    ranked one on 2 ranks of 1 thread; a GPU one is marked gpu (skipped without a GPU)."""
    for name, entry in registry.ENGINES.items():
        marks = [pytest.mark.gpu] if entry.gpu else []
        counts = [1, 2] if entry.parallel and not entry.ranks else [1]
        for threads in counts:
            case = f"{name}-2ranks" if entry.ranks else f"{name}-{threads}"
            yield pytest.param(name, threads, id=case, marks=marks)


def skip_unless_runs_as_named(name: str) -> None:
    simulated = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
    if simulated and registry.ENGINES[name].numba_target == "cuda":
        # The simulator runs every GPU thread in Python: too slow for this problem size; the
        # simulator tests below check the same kernels on a smaller one.
        pytest.skip(f"engine {name!r} runs in numba's CUDA simulator here; this is for a GPU")
    reason = tinycnn.unavailable_reason(name)
    if reason is not None:
        pytest.skip(reason)


@pytest.mark.slow  # seconds: spawns processes or trains
@pytest.mark.parametrize(("name", "threads"), list(engine_cases()))
def test_every_engine_matches_the_reference_step_by_step(train_digits, reference, name, threads):
    """Same init, same batches: the per-step losses, final weights and logits of the reference."""
    skip_unless_runs_as_named(name)
    if registry.ENGINES[name].ranks:
        assert_matches(run_ddp(2, *train_digits, name=name), reference)
    else:
        assert_matches(run_engine(name, *train_digits, threads=threads), reference)


def test_numba_queued_steps_run_in_order_whatever_the_queue_length(train_digits, monkeypatch):
    """train_step only queues; the queue runs when full and before anything reads the engine."""
    from cnnpar.nets.tinycnn import numba_engine

    images, labels = train_digits
    whole = run_engine("numba", images, labels)  # 16 steps: one compiled call at epoch_stats
    monkeypatch.setattr(numba_engine, "QUEUE_STEPS", 3)  # calls of 3, 3, 3, 3, 3 and 1 steps
    chunked = run_engine("numba", images, labels)
    np.testing.assert_array_equal(chunked[0], whole[0])
    for key in spec.PARAM_KEYS:
        np.testing.assert_array_equal(chunked[2][key], whole[2][key])

    engine = numba_engine.NumbaEngine(spec.init_params(FILTERS, seed=0), lr=LR, threads=1)
    engine.load_epoch(images, labels)
    before = engine.params()
    engine.train_step(0, BATCH)
    after_one = engine.params()  # reading the weights runs the queued step first
    assert not np.array_equal(before["fc_w"], after_one["fc_w"])
    engine.train_step(BATCH, 2 * BATCH)
    engine.load_epoch(images[::-1].copy(), labels[::-1].copy())  # runs step 2 on the old data
    assert engine.epoch_stats()[0].shape == (0,), "a new epoch starts with no statistics"
    reference_engine = numba_engine.NumbaEngine(spec.init_params(FILTERS, seed=0), lr=LR, threads=1)
    reference_engine.load_epoch(images, labels)
    reference_engine.train_step(0, BATCH)
    reference_engine.train_step(BATCH, 2 * BATCH)
    np.testing.assert_array_equal(engine.params()["fc_w"], reference_engine.params()["fc_w"])
    with pytest.raises(ValueError, match="outside the 256 images"):
        engine.train_step(250, 260)


NUMBA_LAYOUTS_SCRIPT = r"""
import json, sys
import numpy as np
from cnnpar.data import load_mnist
from cnnpar.nets.tinycnn import numba_engine, spec
from cnnpar.nets.tinycnn.numpy_engine import NumpyEngine
filters, batch, n = map(int, sys.argv[1:4])
data = load_mnist("train")
images, labels = data.images[:n], data.labels[:n].astype(np.int64)
runs = {"numpy": (NumpyEngine, None, 1)}
for threads in (3, 4):
    runs[f"shared {threads}"] = (numba_engine.NumbaEngine, 1, threads)
    runs[f"replicas {threads}"] = (numba_engine.NumbaEngine, threads, threads)
out = {}
for name, (engine_type, replicate_up_to, threads) in runs.items():
    if replicate_up_to is not None:
        numba_engine.REPLICATE_UP_TO = replicate_up_to
    engine = engine_type.from_params(spec.init_params(filters, seed=0), lr=0.05, threads=threads)
    engine.load_epoch(images, labels)
    for start, stop in spec.batch_bounds(n, batch):
        engine.train_step(start, stop)
    losses, _ = engine.epoch_stats()
    copies = engine._w["wf"].shape[0] if replicate_up_to is not None else 1
    out[name] = {
        "copies": copies,
        "losses": losses.tolist(),
        "params": {k: v.ravel().tolist() for k, v in engine.params().items()},
    }
print(json.dumps(out))
"""


@pytest.mark.slow  # seconds: spawns a process and trains
def test_numba_weight_layouts_match_the_reference_beyond_two_threads():
    """Up to REPLICATE_UP_TO threads each numba thread keeps a replica of the weights; beyond,
    the threads share one copy, updated in column slices. Both layouts, at 3 and 4 threads (a
    subprocess gives numba 4 whatever the cores), reproduce the reference; with batches of 3,
    one of 4 threads has no images."""
    env = dict(os.environ, NUMBA_NUM_THREADS="4")
    runs = []
    for args in ((FILTERS, BATCH, 64), (FILTERS, 3, 6)):
        proc = subprocess.run(
            [sys.executable, "-c", NUMBA_LAYOUTS_SCRIPT, *map(str, args)],
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
        )
        assert proc.returncode == 0, proc.stderr
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    for result in runs:
        ref = result.pop("numpy")
        for name, got in result.items():
            threads = int(name.split()[1])
            assert got["copies"] == (threads if name.startswith("replicas") else 1), name
            np.testing.assert_allclose(got["losses"], ref["losses"], rtol=RTOL, atol=ATOL)
            for key in spec.PARAM_KEYS:
                np.testing.assert_allclose(
                    got["params"][key], ref["params"][key], rtol=RTOL, atol=ATOL, err_msg=name
                )


def test_partial_final_batch_is_used(train_digits):
    images, labels = train_digits
    n = 40  # batches of 16, 16 and 8
    ref = run_engine("numpy", images[:n], labels[:n])
    got = run_engine("numba", images[:n], labels[:n])
    assert len(ref[0]) == 3
    for key in spec.PARAM_KEYS:
        np.testing.assert_allclose(got[2][key], ref[2][key], rtol=RTOL, atol=ATOL)
    # Dropping the last 8 images would give different weights.
    truncated = run_engine("numpy", images[:32], labels[:32])
    assert not np.allclose(truncated[2]["fc_w"], ref[2]["fc_w"], rtol=RTOL, atol=ATOL)


CUDASIM_SCRIPT = r"""
import json, sys
import numpy as np
from cnnpar.data import load_mnist
from cnnpar.nets.tinycnn import spec, get_engine
filters, batch, n, cycles = map(int, sys.argv[1:5])
data = load_mnist("train")
images, labels = data.images[:n], data.labels[:n].astype(np.int64)
out = {}
for name in ("numpy", "cuda"):
    engine = get_engine(name).from_params(spec.init_params(filters, seed=0), lr=0.05)
    engine.warm_up()
    engine.load_epoch(images, labels)
    for start, stop in list(spec.batch_bounds(n, batch)) * cycles:
        engine.train_step(start, stop)
    losses, correct = engine.epoch_stats()
    out[name] = {
        "losses": losses.tolist(),
        "correct": correct.tolist(),
        "params": {k: v.ravel().tolist() for k, v in engine.params().items()},
        "logits": engine.predict(images[:4]).ravel().tolist(),
    }
print(json.dumps(out))
"""


def run_in_cuda_simulator(filters: int, batch: int, images: int, cycles: int) -> tuple[dict, dict]:
    """numpy's and the cuda engine's results (CUDASIM_SCRIPT) from a simulator subprocess."""
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    args = [str(v) for v in (filters, batch, images, cycles)]
    proc = subprocess.run(
        [sys.executable, "-c", CUDASIM_SCRIPT, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return result["numpy"], result["cuda"]


@pytest.mark.slow  # seconds: spawns processes or trains
def test_cuda_kernels_match_numpy_in_simulator():
    # Small, because the simulator runs each GPU thread as a Python thread: F=2, batches of 8
    # and a final partial batch of 4 (so every reduction sees a batch that is not a multiple).
    ref, got = run_in_cuda_simulator(2, 8, 12, cycles=1)
    assert len(got["losses"]) == 2
    np.testing.assert_allclose(got["losses"], ref["losses"], rtol=RTOL, atol=ATOL)
    assert got["correct"] == ref["correct"]
    for key in spec.PARAM_KEYS:
        np.testing.assert_allclose(
            got["params"][key], ref["params"][key], rtol=RTOL, atol=ATOL, err_msg=key
        )
    np.testing.assert_allclose(got["logits"], ref["logits"], rtol=RTOL, atol=1e-4)


@pytest.mark.slow  # seconds: spawns processes or trains
def test_cuda_kernels_take_more_steps_than_images_in_simulator():
    """A bench cycles through one loaded epoch for longer than it has images: 6 steps of one
    image over 2 images must grow the per-step statistics on the device, not write past them."""
    ref, got = run_in_cuda_simulator(2, 1, 2, cycles=3)
    assert len(got["losses"]) == len(ref["losses"]) == 6
    np.testing.assert_allclose(got["losses"], ref["losses"], rtol=RTOL, atol=ATOL)
    assert got["correct"] == ref["correct"]


@pytest.mark.parametrize("name", [n for n in IN_PROCESS if n != REFERENCE])
def test_more_steps_than_images_in_one_loaded_epoch(train_digits, name):
    images, labels = train_digits[0][:8], train_digits[1][:8]
    bounds = list(spec.batch_bounds(8, 4)) * 5  # 10 steps over 8 images
    results = {}
    for engine_name in (REFERENCE, name):
        engine = tinycnn.get_engine(engine_name).from_params(
            spec.init_params(FILTERS, seed=0), lr=LR, threads=1
        )
        engine.load_epoch(images, labels)
        for start, stop in bounds:
            engine.train_step(start, stop)
        results[engine_name] = engine.epoch_stats(), engine.params()
    (ref_losses, ref_correct), ref_params = results[REFERENCE]
    (losses, correct), params = results[name]
    assert losses.shape == ref_losses.shape == (10,)
    np.testing.assert_allclose(losses, ref_losses, rtol=RTOL, atol=ATOL)
    assert correct.tolist() == ref_correct.tolist()
    np.testing.assert_allclose(params["fc_w"], ref_params["fc_w"], rtol=RTOL, atol=ATOL)
    with pytest.raises(ValueError, match="outside the 8 images"):
        engine.train_step(4, 9)


# --- torch-compile: compiled before the clock, at one thread count ---------------------------


def test_torch_compile_compiles_the_announced_batch_sizes_in_warm_up(train_digits, reference):
    """After warm_up, training at the announced sizes compiles nothing (the stance raises if it
    would), and warm_up left the weights as they were. Same shapes as the conformance cases, so
    it reuses their graphs when run with them."""
    import torch

    skip_unless_runs_as_named("torch-compile")
    engine = tinycnn.get_engine("torch-compile").from_params(
        spec.init_params(FILTERS, seed=0), lr=LR, threads=1
    )
    engine.expect_batch_sizes([BATCH, BATCH])
    engine.warm_up()
    for key, value in spec.init_params(FILTERS, seed=0).items():
        np.testing.assert_array_equal(engine.params()[key], value, err_msg=key)
    images, labels = train_digits
    engine.load_epoch(images, labels)
    with torch.compiler.set_stance("fail_on_recompile"):
        for start, stop in spec.batch_bounds(len(labels), BATCH):
            engine.train_step(start, stop)
        losses, _ = engine.epoch_stats()
    np.testing.assert_allclose(losses, reference[0], rtol=RTOL, atol=ATOL)


def test_torch_compile_trainer_announces_the_full_and_the_last_batch():
    from types import SimpleNamespace

    from cnnpar.nets.training import TinyCNNTrainer

    skip_unless_runs_as_named("torch-compile")
    cfg = SimpleNamespace(
        engine="torch-compile", filters=2, seed=0, lr=LR, train_size=80, batch_size=32
    )
    built = TinyCNNTrainer.build(cfg, host_threads=1)
    assert built.engine._batch_sizes == (16, 32)  # 32, 32, then the last 16


def test_torch_compile_drops_its_graphs_when_the_thread_count_changes(monkeypatch):
    """Inductor keeps the thread count it compiled at, unguarded: a new count must recompile,
    and the registry never interleaves its thread counts in one process."""
    import torch

    skip_unless_runs_as_named("torch-compile")
    from cnnpar.nets.tinycnn import torch_compile_engine as tce

    entry = registry.ENGINES["torch-compile"]
    assert entry.parallel and entry.inductor and not entry.switches_threads
    resets = []
    monkeypatch.setattr(torch.compiler, "reset", lambda: resets.append(1))
    monkeypatch.setattr(tce, "_compiled_at_threads", None)
    before = torch.get_num_threads()
    try:
        tce.match_threads()
        tce.match_threads()
        assert resets == []
        torch.set_num_threads(before + 1)
        tce.match_threads()
        assert resets == [1]
    finally:
        torch.set_num_threads(before)


# --- the numpy reference against finite differences ----------------------------------------


def test_numpy_gradient_matches_finite_differences(train_digits):
    images, labels = train_digits
    rng = np.random.default_rng(1)
    params = spec.copy_params(spec.init_params(2, seed=3), np.float64)
    # Non-zero biases so the ReLU and pooling decisions are generic, not ties at exactly 0.
    params["conv_b"] = rng.normal(0, 0.1, params["conv_b"].shape)
    params["fc_b"] = rng.normal(0, 0.1, params["fc_b"].shape)
    x = spec.to_float(images[:6], np.float64)
    y = labels[:6]
    _, grads, _ = numpy_engine.loss_and_grads(params, x, y)
    eps = 1e-6
    for key in spec.PARAM_KEYS:
        flat = params[key].reshape(-1)
        picks = rng.choice(flat.size, size=min(12, flat.size), replace=False)
        for i in picks:
            saved = flat[i]
            flat[i] = saved + eps
            up, _, _ = numpy_engine.loss_and_grads(params, x, y)
            flat[i] = saved - eps
            down, _, _ = numpy_engine.loss_and_grads(params, x, y)
            flat[i] = saved
            numeric = (up - down) / (2 * eps)
            analytic = grads[key].reshape(-1)[i]
            assert analytic == pytest.approx(numeric, rel=1e-5, abs=1e-8), (key, i)
    assert np.abs(grads["conv_w"]).max() > 0  # the conv gradient is not trivially zero


def test_numpy_loss_is_softmax_cross_entropy():
    params = spec.copy_params(spec.init_params(1, seed=0), np.float64)
    x = np.zeros((3, 28, 28))
    y = np.array([0, 5, 9])
    # Zero input: every image gets the same logits fc_b + fc_w · pooled(relu(conv_b)) = fc_b.
    loss, _, _ = numpy_engine.loss_and_grads(params, x, y)
    assert loss == pytest.approx(np.log(10))


# --- registry -----------------------------------------------------------------------------


def test_engine_registry_lists_all_engines():
    status = tinycnn.available_engines()
    assert tuple(status) == tuple(registry.ENGINES)
    for name, entry in registry.ENGINES.items():
        if entry.device == "cpu":
            assert status[name] is None, name


def test_unknown_engine_is_a_user_error():
    with pytest.raises(tinycnn.UnknownEngine, match="choose one of numpy, numba"):
        tinycnn.get_engine("jax")


def test_cuda_without_gpu_names_the_simulator(monkeypatch):
    monkeypatch.delenv("NUMBA_ENABLE_CUDASIM", raising=False)
    if tinycnn._numba_cuda_available():
        pytest.skip("a CUDA GPU is present")
    with pytest.raises(tinycnn.EngineUnavailable) as err:
        tinycnn.get_engine("cuda")
    assert str(err.value) == (
        "engine 'cuda' needs a CUDA GPU; none found (set NUMBA_ENABLE_CUDASIM=1 to simulate)"
    )


# --- torch-ddp: the same steps on ranks ---------------------------------------------------------


def _ddp_rank(ctx, images, labels, batch, name):
    """A rank's part of run_engine(name, ...), started by cnnpar.ranks."""
    result = run_engine(name, images, labels, batch=batch, threads=1)
    ctx.end_timed()
    return result


def run_ddp(ranks_count, images, labels, batch=BATCH, name="torch-ddp"):
    from cnnpar import ranks

    args = (images, labels, batch, name)
    return ranks.run(_ddp_rank, args, ranks=ranks_count, threads=1, timeout_s=60)


@pytest.fixture
def three_cpus(monkeypatch):
    """Three 1-thread ranks on this 2-CPU machine: the equivalence needs 3 ranks, not speed."""
    from cnnpar import limits

    monkeypatch.setattr(limits, "cpus_available", lambda: 3)


def test_ddp_shards_cover_the_batch_contiguously():
    from cnnpar.nets.tinycnn.ddp_engine import shard

    for size, world in ((16, 2), (16, 3), (2, 3), (1, 2), (7, 7)):
        bounds = [shard(10, 10 + size, r, world) for r in range(world)]
        assert bounds[0][0] == 10 and bounds[-1][1] == 10 + size
        assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))
        sizes = [hi - lo for lo, hi in bounds]
        assert max(sizes) - min(sizes) <= 1


@pytest.mark.slow  # seconds: spawns processes or trains
def test_ddp_three_uneven_ranks_match_numpy(train_digits, reference, three_cpus):
    assert BATCH % 3 != 0  # shards of 6, 5 and 5 rows
    assert_matches(run_ddp(3, *train_digits), reference)


@pytest.mark.slow  # seconds: spawns processes or trains
def test_ddp_empty_shard_and_partial_batch_match_numpy(train_digits):
    """257 digits in batches of 16: the last batch has one row, so rank 1's shard is empty and
    it still joins the all-reduce."""
    images, labels = (np.concatenate([a, a[:1]]) for a in train_digits)
    ref = run_engine("numpy", images, labels)
    got = run_ddp(2, images, labels)
    np.testing.assert_allclose(got[0], ref[0], rtol=RTOL, atol=ATOL)
    assert got[1].sum() == pytest.approx(ref[1].sum(), abs=2)
    for key in spec.PARAM_KEYS:
        np.testing.assert_allclose(got[2][key], ref[2][key], rtol=RTOL, atol=ATOL, err_msg=key)
