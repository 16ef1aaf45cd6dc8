"""What `cnnpar train` needs to know about each model, behind one small protocol.

`registry.MODELS[name].trainer` names a class here. The training loop (`cnnpar.train`) asks it
for a memory estimate before any work, for the engine to train, and to write the model's outputs
(`registry.MODELS[name].outputs`) into the run directory; it never branches on the model name.

    trainer = getattr(training, MODELS[cfg.model].trainer)
    need = trainer.memory_estimate(cfg)             # bytes, before any data is loaded
    built = trainer.build(cfg, host_threads)        # Built(engine, flops, parameters, ...)
    trainer.write(tmp_dir, built)                   # model outputs, in the record's order
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from cnnpar import io
from cnnpar.nets.tinycnn import spec

if TYPE_CHECKING:  # the training config imports this module's users, not the other way round
    from cnnpar.nets.tinycnn import Engine
    from cnnpar.train import TrainConfig

EVAL_CHUNK = 1000  # test images per predict call: bounds the numpy engine's im2col memory


@dataclass
class Built:
    """A model ready to train: its engine, training FLOPs per image, parameter count, the
    compulsory bytes per image of a step and the step's working set (bytes; the model's
    `bytes_per_image` and `working_set_bytes` at the run's batch size), and what `write` needs
    besides the trained engine (TinyCNN's initial weights)."""

    engine: Engine
    flops_per_image: int
    parameters: int
    bytes_per_image: float
    working_set_bytes: int
    init: dict[str, Any] = field(default_factory=dict)


class Trainer(Protocol):
    @staticmethod
    def memory_estimate(cfg: TrainConfig) -> int: ...

    @staticmethod
    def build(cfg: TrainConfig, host_threads: int) -> Built: ...

    @staticmethod
    def write(tmp: Path, built: Built) -> None: ...


def _data_bytes(cfg: TrainConfig) -> int:
    pixels = spec.IMAGE * spec.IMAGE
    return (2 * cfg.train_size + cfg.test_size) * pixels  # digits, the epoch's shuffled copy


def _batch(cfg: TrainConfig) -> int:
    """The images of a full step: the batch size, or the training set when it is smaller."""
    return min(cfg.batch_size, cfg.train_size)


def _engine_class(name: str) -> type:
    from cnnpar.nets import tinycnn

    return tinycnn.get_engine(name)


class TinyCNNTrainer:
    """TinyCNN: weights from `spec.init_params(filters, seed)`, any engine; outputs the initial
    and final weights (npz, float32, torch layout)."""

    @staticmethod
    def memory_estimate(cfg: TrainConfig) -> int:
        """Bytes at least: the digits (and the epoch's shuffled copy), the weights with their
        gradients, the initial copy and a gradient accumulator per thread (numba), and one
        batch's activations; an order-of-magnitude check, not a budget."""
        batch = min(cfg.batch_size, cfg.train_size)
        params = spec.n_parameters(cfg.filters)
        per_image = cfg.filters * (spec.CONV * spec.CONV + 3 * spec.CELLS)  # conv, pool, grads
        weights = params * (3 + cfg.threads)
        activations = (batch + EVAL_CHUNK) * per_image
        return _data_bytes(cfg) + 4 * (weights + activations)

    @staticmethod
    def build(cfg: TrainConfig, host_threads: int) -> Built:
        init = spec.init_params(cfg.filters, cfg.seed)
        engine = _engine_class(cfg.engine).from_params(init, lr=cfg.lr, threads=host_threads)
        expect = getattr(engine, "expect_batch_sizes", None)
        if expect is not None:  # an engine that compiles per batch shape does so in warm-up
            expect({b - a for a, b in spec.batch_bounds(cfg.train_size, cfg.batch_size)})
        return Built(
            engine,
            spec.flops_per_image(cfg.filters, training=True),
            spec.n_parameters(cfg.filters),
            spec.bytes_per_image(cfg.filters, _batch(cfg), training=True),
            spec.working_set_bytes(cfg.filters, _batch(cfg), training=True),
            init,
        )

    @staticmethod
    def write(tmp: Path, built: Built) -> None:
        io.write_npz(tmp / "weights_init.npz", **built.init)
        io.write_npz(tmp / "weights_final.npz", **built.engine.params())


class MosaicNetTrainer:
    """MosaicNet with Adam: weights from `torch.manual_seed(seed)`, torch engines only; outputs
    the trained state_dict (model.pt)."""

    @staticmethod
    def memory_estimate(cfg: TrainConfig) -> int:
        """Bytes at least: the digits, the weights with gradients and Adam's two moments, and
        one batch's activations kept for the backward pass plus their gradients."""
        from cnnpar.nets import mosaicnet

        batch = min(cfg.batch_size, cfg.train_size)
        weights = 4 * mosaicnet.N_PARAMETERS
        activations = 2 * batch * mosaicnet.ACTIVATION_FLOATS
        return _data_bytes(cfg) + 4 * (weights + activations)

    @staticmethod
    def build(cfg: TrainConfig, host_threads: int) -> Built:
        import torch

        from cnnpar.nets import mosaicnet

        torch.manual_seed(cfg.seed)  # the initial weights come from the seed alone
        model = mosaicnet.MosaicNet()

        def adam(parameters: Any) -> torch.optim.Optimizer:
            return torch.optim.Adam(parameters, lr=cfg.lr)

        # Every engine that trains MosaicNet (registry.Engine.models) wraps any torch module.
        engine = _engine_class(cfg.engine).from_module(model, adam, threads=host_threads)
        return Built(
            engine,
            mosaicnet.flops_per_image(training=True),
            mosaicnet.N_PARAMETERS,
            mosaicnet.bytes_per_image(_batch(cfg), training=True),
            mosaicnet.working_set_bytes(_batch(cfg), training=True),
        )

    @staticmethod
    def write(tmp: Path, built: Built) -> None:
        io.write_bytes(tmp / "model.pt", torch_bytes(built.engine.model_state()))


def torch_bytes(obj: object) -> bytes:
    """torch.save into memory: written to a full disk, torch.save fails with a RuntimeError
    about zip positions; a plain write fails with ENOSPC, which names the real cause."""
    import io as bytes_io

    import torch

    buffer = bytes_io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()
