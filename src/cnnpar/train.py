"""The engine-agnostic training loop behind `cnnpar train`.

    config → validate everything (before any work) → set threads → load MNIST → build engine →
    warm-up (compile; not timed) → epochs: [timed: load epoch, every step, read back stats] →
    evaluate on the test digits (not timed) → write weights, metrics.csv, run.json atomically.

The loop sees only the engine protocol of `cnnpar.nets.tinycnn` (load_epoch, train_step,
epoch_stats, predict), so TinyCNN on any engine and MosaicNet (through `MosaicTrainer`, which
speaks the same protocol) are trained, timed and recorded the same way.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from cnnpar import io, timing
from cnnpar.data import COUNTS, Mnist, load_mnist
from cnnpar.errors import CnnparError
from cnnpar.nets import tinycnn
from cnnpar.nets.tinycnn import spec

MODELS = ("tinycnn", "mosaicnet")
MOSAICNET_ENGINES = ("torch", "torch-cuda")
METRIC_FIELDS = (
    "epoch",
    "seconds",
    "images_per_s",
    "train_loss",
    "train_acc",
    "test_loss",
    "test_acc",
)
# Per-model defaults for the options a user leaves out (None in a TrainConfig).
DEFAULTS: dict[str, dict[str, Any]] = {
    "tinycnn": {"engine": "numba", "filters": 8, "batch_size": 32, "epochs": 3, "lr": 0.05},
    # Adam at its usual 1e-3; MosaicNet ignores --filters.
    "mosaicnet": {"engine": "torch", "filters": None, "batch_size": 64, "epochs": 2, "lr": 1e-3},
}
EVAL_CHUNK = 1000  # test images per predict call: bounds the numpy engine's im2col memory


class TrainConfigError(CnnparError):
    """An argument of `cnnpar train` is out of range or does not fit the model."""


@dataclass(frozen=True)
class TrainConfig:
    out: str
    model: str = "tinycnn"
    engine: str | None = None
    threads: int = 1
    filters: int | None = None
    batch_size: int | None = None
    epochs: int | None = None
    lr: float | None = None
    seed: int = 0
    train_size: int = COUNTS["train"]
    test_size: int = COUNTS["test"]
    shuffle: bool = True
    data_source: str = "bundled"

    def resolved(self) -> TrainConfig:
        """This config with the model's defaults filled in for every None."""
        if self.model not in MODELS:
            raise TrainConfigError(
                f"unknown model {self.model!r}; choose one of {', '.join(MODELS)}"
            )
        fill = {k: v for k, v in DEFAULTS[self.model].items() if getattr(self, k) is None}
        return dataclasses.replace(self, **fill)


def validate(cfg: TrainConfig) -> TrainConfig:
    """Check every argument and the output directory; return the resolved config.

    Runs before any data is loaded or any file is written, so a bad argument costs nothing and
    leaves nothing behind.
    """
    cfg = cfg.resolved()
    checks = [
        (cfg.threads >= 1, f"--threads must be >= 1 (got {cfg.threads})"),
        (cfg.batch_size >= 1, f"--batch-size must be >= 1 (got {cfg.batch_size})"),
        (cfg.epochs >= 1, f"--epochs must be >= 1 (got {cfg.epochs})"),
        (
            math.isfinite(cfg.lr) and cfg.lr > 0,
            f"--lr must be a positive finite number (got {cfg.lr})",
        ),
        (cfg.seed >= 0, f"--seed must be >= 0 (got {cfg.seed})"),
        (
            1 <= cfg.train_size <= COUNTS["train"],
            f"--train-size must be in 1..{COUNTS['train']} (got {cfg.train_size})",
        ),
        (
            1 <= cfg.test_size <= COUNTS["test"],
            f"--test-size must be in 1..{COUNTS['test']} (got {cfg.test_size})",
        ),
    ]
    if cfg.model == "tinycnn":
        checks.append((cfg.filters >= 1, f"--filters must be >= 1 (got {cfg.filters})"))
    for ok, message in checks:
        if not ok:
            raise TrainConfigError(message)
    if cfg.model == "mosaicnet" and cfg.engine not in MOSAICNET_ENGINES:
        raise TrainConfigError(
            "--model mosaicnet trains with torch only; "
            f"use --engine {' or '.join(MOSAICNET_ENGINES)}"
        )
    tinycnn.get_engine(cfg.engine)  # unknown or unavailable engine: a one-line error
    io.ensure_writable_dir(cfg.out)
    return cfg


# --- the loop -----------------------------------------------------------------------------


def evaluate(predict: Callable[[np.ndarray], np.ndarray], data: Mnist) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of `predict`'s logits over `data`."""
    loss_sum = 0.0
    correct = 0
    for lo in range(0, len(data.labels), EVAL_CHUNK):
        logits = np.asarray(predict(data.images[lo : lo + EVAL_CHUNK]), np.float64)
        y = data.labels[lo : lo + EVAL_CHUNK].astype(np.int64)
        shifted = logits - logits.max(axis=1, keepdims=True)
        log_z = np.log(np.exp(shifted).sum(axis=1))
        loss_sum += float((log_z - shifted[np.arange(len(y)), y]).sum())
        correct += int((logits.argmax(axis=1) == y).sum())
    n = len(data.labels)
    return loss_sum / n, correct / n


def train_epochs(
    engine: tinycnn.Engine,
    train: Mnist,
    test: Mnist,
    *,
    batch_size: int,
    epochs: int,
    seed: int,
    shuffle: bool,
    progress: bool | None = None,
) -> list[dict[str, float | int]]:
    """Train `engine` in place; one metrics row per epoch.

    `seconds` covers handing the epoch's data to the engine, every step, and reading the step
    statistics back (which waits for a GPU to finish); test evaluation is outside it.
    """
    from tqdm.auto import tqdm

    if progress is None:
        progress = sys.stderr.isatty()
    n = len(train.labels)
    rows = []
    for epoch in range(epochs):
        order = spec.epoch_order(n, epoch, seed, shuffle)
        images, labels = train.images[order], train.labels[order].astype(np.int64)
        bounds = list(spec.batch_bounds(n, batch_size))
        bar = tqdm(
            total=len(bounds),
            desc=f"epoch {epoch + 1}/{epochs}",
            unit="step",
            disable=not progress,
            leave=False,
        )
        start_time = time.perf_counter()
        engine.load_epoch(images, labels)
        for start, stop in bounds:
            engine.train_step(start, stop)
            bar.update()
        losses, correct = engine.epoch_stats()
        seconds = time.perf_counter() - start_time
        bar.close()
        sizes = np.array([stop - start for start, stop in bounds], np.float64)
        test_loss, test_acc = evaluate(engine.predict, test)
        rows.append(
            {
                "epoch": epoch + 1,
                "seconds": seconds,
                "images_per_s": n / seconds,
                "train_loss": float((losses * sizes).sum() / n),  # mean over images
                "train_acc": float(correct.sum() / n),
                "test_loss": test_loss,
                "test_acc": test_acc,
            }
        )
    return rows


# --- MosaicNet through the same protocol --------------------------------------------------


class MosaicTrainer:
    """MosaicNet with Adam, speaking the engine protocol so `train_epochs` can drive it."""

    parallel: ClassVar[bool] = True

    def __init__(self, device: str, lr: float, seed: int) -> None:
        import torch

        from cnnpar.nets.mosaicnet import MosaicNet

        self.torch = torch
        self.device = device
        torch.manual_seed(seed)  # the initial weights come from the seed alone
        self.model = MosaicNet().to(device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=lr)
        self.threads = torch.get_num_threads()
        self._step_index = 0

    def _input(self, images: np.ndarray):
        from cnnpar.nets.mosaicnet import to_input

        return to_input(self.torch.from_numpy(np.array(images, np.uint8)).to(self.device))

    def _sync(self) -> None:
        if self.device != "cpu":
            self.torch.cuda.synchronize()

    def warm_up(self) -> None:
        """One forward/backward on a copy: oneDNN/cuDNN choose kernels; the weights stay put."""
        import copy

        spare = copy.deepcopy(self.model)
        x = self._input(np.zeros((2, 28, 28), np.uint8))
        spare(x).sum().backward()
        self._sync()

    def load_epoch(self, images: np.ndarray, labels: np.ndarray) -> None:
        torch = self.torch
        self._images = torch.from_numpy(np.array(images, np.uint8)).to(self.device)
        self._labels = torch.from_numpy(np.array(labels, np.int64)).to(self.device)
        self._losses = torch.zeros(len(labels), dtype=torch.float32, device=self.device)
        self._correct = torch.zeros(len(labels), dtype=torch.int64, device=self.device)
        self._step_index = 0

    def train_step(self, start: int, stop: int) -> None:
        from cnnpar.nets.mosaicnet import to_input

        self.model.train()
        x = to_input(self._images[start:stop])
        y = self._labels[start:stop]
        logits = self.model(x)
        loss = self.torch.nn.functional.cross_entropy(logits, y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self._losses[self._step_index] = loss.detach()
        self._correct[self._step_index] = (logits.detach().argmax(dim=1) == y).sum()
        self._step_index += 1

    def epoch_stats(self) -> tuple[np.ndarray, np.ndarray]:
        n = self._step_index
        return (
            self._losses[:n].cpu().numpy().astype(np.float64),
            self._correct[:n].cpu().numpy(),
        )

    def predict(self, images: np.ndarray) -> np.ndarray:
        self.model.eval()
        with self.torch.inference_mode():
            return self.model(self._input(images)).float().cpu().numpy()


# --- the command --------------------------------------------------------------------------


@dataclass
class TrainResult:
    out: Path
    rows: list[dict[str, float | int]]
    run: dict[str, Any]


def run(cfg: TrainConfig, progress: bool | None = None) -> TrainResult:
    """`cnnpar train`: validate, train, and write the run directory."""
    cfg = validate(cfg)
    engine_cls = tinycnn.get_engine(cfg.engine)
    # The numpy reference and the GPU engines use one host thread; the others get --threads.
    host_threads = cfg.threads if engine_cls.parallel else 1
    threads = timing.set_threads(host_threads)
    source = cfg.data_source
    train = _first(load_mnist("train", source), cfg.train_size)
    test = _first(load_mnist("test", source), cfg.test_size)

    if cfg.model == "tinycnn":
        init = spec.init_params(cfg.filters, cfg.seed)
        engine = engine_cls.from_params(init, lr=cfg.lr, threads=host_threads)
        flops = spec.flops_per_image(cfg.filters, training=True)
        n_params = spec.n_parameters(cfg.filters)
    else:
        from cnnpar.nets import mosaicnet

        device = "cuda" if cfg.engine == "torch-cuda" else "cpu"
        engine = MosaicTrainer(device, cfg.lr, cfg.seed)
        # forward + backward ≈ 3 × forward (the first conv's input gradient is skipped, ~0.4%)
        flops = 3 * mosaicnet.FLOPS_PER_IMAGE
        n_params = mosaicnet.N_PARAMETERS

    warm_start = time.perf_counter()
    engine.warm_up()
    warmup_s = time.perf_counter() - warm_start
    rows = train_epochs(
        engine,
        train,
        test,
        batch_size=cfg.batch_size,
        epochs=cfg.epochs,
        seed=cfg.seed,
        shuffle=cfg.shuffle,
        progress=progress,
    )

    out = Path(cfg.out)
    record = {
        "command": "train",
        "args": dataclasses.asdict(cfg),
        "threads": threads,
        "engine_threads": engine.threads,
        "numba_threading_layer": _numba_threading_layer() if cfg.engine == "numba" else None,
        "parameters": n_params,
        "flops_per_image": flops,
        "warmup_s": warmup_s,
        "train_seconds": sum(r["seconds"] for r in rows),
        "final_test_acc": rows[-1]["test_acc"],
        "final_test_loss": rows[-1]["test_loss"],
        "environment": timing.environment().as_dict(),
        "outputs": [],
    }
    # run.json is written last: its presence means the directory is complete.
    if cfg.model == "tinycnn":
        io.write_npz(out / "weights_init.npz", **init)
        io.write_npz(out / "weights_final.npz", **engine.params())
        record["outputs"] = ["weights_init.npz", "weights_final.npz"]
    else:
        import torch

        with io.atomic_path(out / "model.pt") as tmp:
            torch.save(engine.model.state_dict(), tmp)
        record["outputs"] = ["model.pt"]
    io.write_csv(out / "metrics.csv", rows, fieldnames=METRIC_FIELDS)
    record["outputs"] += ["metrics.csv", "run.json"]
    io.write_json(out / "run.json", record)
    return TrainResult(out=out, rows=rows, run=record)


def _first(data: Mnist, n: int) -> Mnist:
    return Mnist(images=data.images[:n], labels=data.labels[:n])


def _numba_threading_layer() -> str | None:
    import numba

    try:
        return str(numba.threading_layer())
    except ValueError:  # no parallel region has run yet
        return None


def format_row(row: dict[str, float | int]) -> str:
    return (
        f"epoch {row['epoch']}: {row['seconds']:.2f} s train ({row['images_per_s']:,.0f} images/s)"
        f"  train loss {row['train_loss']:.4f} acc {row['train_acc']:.4f}"
        f"  test loss {row['test_loss']:.4f} acc {row['test_acc']:.4f}"
    )


def engines_table() -> list[tuple[str, str]]:
    """(engine, 'available' or the reason it is not) for `cnnpar engines`."""
    rows = []
    for name, reason in tinycnn.available_engines().items():
        status = reason or "available"
        if name == "cuda" and reason is None and os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
            status = "available (CUDA simulator: NUMBA_ENABLE_CUDASIM=1)"
        rows.append((name, status))
    return rows
