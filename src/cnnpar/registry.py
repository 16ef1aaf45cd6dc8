"""Every named concept of cnnpar, declared once: engines, classify modes, backends, models and
figures.

The CLI takes its choices from here, the workflow its sweep rules, the report its titles and
captions, and the tests their lists. Adding an engine, a mode or a figure is one entry here plus
its own code and test. This module imports neither torch, numba nor matplotlib, so anything may
read it cheaply (the Snakefile does, on every parse).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Device = Literal["cpu", "cuda"]
# The library that drives an engine's device: what decides whether a GPU engine can run here.
Runtime = Literal["numpy", "numba", "torch"]
# How a command's work is laid out over processes and threads:
#   "threads"    one process, its own threads (--threads, or --workers as threads)
#   "processes"  worker processes started by the command, one thread each (--workers)
#   "ranks"      torch.distributed ranks (--ranks), each with --threads threads (cnnpar.ranks)
Layout = Literal["threads", "processes", "ranks"]


@dataclass(frozen=True)
class Engine:
    """A TinyCNN (and maybe MosaicNet) training engine."""

    name: str
    module: str  # the module holding `cls`, imported only when the engine is used
    cls: str
    parallel: bool  # whether host threads mean anything to it (else it runs at 1)
    device: Device  # decides availability (a GPU engine needs one) and cluster GPU resources
    runtime: Runtime  # which library is asked whether `device` is there
    models: tuple[str, ...]  # which models it can train
    summary: str
    layout: Layout = "threads"
    # Compiled by torch.compile's inductor: it needs a C++ compiler, and its kernels keep the
    # torch thread count they were compiled at, so one process runs it at one count.
    inductor: bool = False

    @property
    def gpu(self) -> bool:
        return self.device == "cuda"

    @property
    def ranks(self) -> bool:
        """Whether it trains as torch.distributed ranks (`--ranks`)."""
        return self.layout == "ranks"

    @property
    def switches_threads(self) -> bool:
        """Whether one process can run it at several thread counts in turn (numba's and torch's
        CPU pools change width between steps), so `cnnpar train --threads 1,2` can interleave
        them in short windows. Not an inductor engine: its compiled kernels would keep their
        count, and recompiling at every switch would put compiles inside the clock."""
        host_threads = self.layout == "threads" and self.device == "cpu"
        return self.parallel and host_threads and not self.inductor

    @property
    def numba_target(self) -> Literal["cpu", "cuda"] | None:
        """The numba target it compiles for ("cpu": JIT with numba's threads, "cuda":
        numba.cuda), so numba's settings (JIT off, the CUDA simulator) decide whether it runs
        as named; None for an engine numba does not compile."""
        return self.device if self.runtime == "numba" else None


@dataclass(frozen=True)
class Mode:
    """A way to classify the cells of a mosaic."""

    name: str
    runner: str  # the class in cnnpar.classify.runners that runs it
    parallel: bool  # whether --workers means anything to it (else it runs 1 worker)
    device: Device
    summary: str
    layout: Layout = "threads"

    @property
    def gpu(self) -> bool:
        return self.device == "cuda"

    @property
    def ranks(self) -> bool:
        """Whether it classifies as torch.distributed ranks (`--ranks`, `--threads`)."""
        return self.layout == "ranks"

    def host_threads(self, workers: int) -> int:
        """Torch threads of the classifying process itself: the workers when they are its
        threads, else 1 (worker processes pin their own)."""
        return workers if self.parallel and self.layout == "threads" else 1

    def worker_processes(self, workers: int) -> int:
        """Classifying processes the command starts besides itself (0 unless processes)."""
        return workers if self.layout == "processes" else 0


@dataclass(frozen=True)
class Backend:
    """How MosaicNet runs for inference."""

    name: str
    cpu_only: bool
    summary: str


@dataclass(frozen=True)
class Model:
    """A network `cnnpar train` trains. `trainer` names the class in cnnpar.nets.training that
    builds its engine, estimates its memory and writes its outputs."""

    name: str
    default_engine: str
    defaults: dict[str, object]  # what `cnnpar train` fills in for an option left out
    summary: str
    trainer: str
    outputs: tuple[str, ...]  # what its run directory holds besides run.json, in order
    options: tuple[str, ...] = ()  # model-specific options of `cnnpar train` (dests)
    shrink: str = "use a smaller --batch-size"  # how to make a run fit in memory


@dataclass(frozen=True)
class Figure:
    """A figure of the study: drawn from the tables by `cnnpar.study.figures.<id>` when
    `tables` names any, else copied from a job's output (the mosaic mask)."""

    id: str
    title: str
    caption: str
    tables: tuple[str, ...]  # which of the tidy tables (train, classify, summary) it reads
    section: str = "figures"  # where the report shows it: figures, or machines

    @property
    def from_tables(self) -> bool:
        return bool(self.tables)


TINYCNN_ENGINE_MODULE = "cnnpar.nets.tinycnn"

ENGINES: dict[str, Engine] = {
    e.name: e
    for e in (
        Engine(
            "numpy",
            f"{TINYCNN_ENGINE_MODULE}.numpy_engine",
            "NumpyEngine",
            parallel=False,
            device="cpu",
            runtime="numpy",
            models=("tinycnn",),
            summary="the float64-accumulating NumPy reference",
        ),
        Engine(
            "numba",
            f"{TINYCNN_ENGINE_MODULE}.numba_engine",
            "NumbaEngine",
            parallel=True,
            device="cpu",
            runtime="numba",
            models=("tinycnn",),
            summary="numba CPU threads, one fused pass per image",
        ),
        Engine(
            "cuda",
            f"{TINYCNN_ENGINE_MODULE}.cuda_engine",
            "CudaEngine",
            parallel=False,
            device="cuda",
            runtime="numba",
            models=("tinycnn",),
            summary="numba.cuda kernels, the batch kept on the device",
        ),
        Engine(
            "torch",
            f"{TINYCNN_ENGINE_MODULE}.torch_engine",
            "TorchEngine",
            parallel=True,
            device="cpu",
            runtime="torch",
            models=("tinycnn", "mosaicnet"),
            summary="PyTorch on the CPU",
        ),
        Engine(
            "torch-compile",
            f"{TINYCNN_ENGINE_MODULE}.torch_compile_engine",
            "TorchCompileEngine",
            parallel=True,
            device="cpu",
            runtime="torch",
            models=("tinycnn",),
            summary="PyTorch on the CPU, the whole SGD step one torch.compile graph (inductor)",
            inductor=True,
        ),
        Engine(
            "torch-cuda",
            f"{TINYCNN_ENGINE_MODULE}.torch_engine",
            "TorchCudaEngine",
            parallel=False,
            device="cuda",
            runtime="torch",
            models=("tinycnn", "mosaicnet"),
            summary="PyTorch on the first CUDA device",
        ),
        Engine(
            "torch-ddp",
            f"{TINYCNN_ENGINE_MODULE}.ddp_engine",
            "DdpEngine",
            parallel=True,
            device="cpu",
            runtime="torch",
            models=("tinycnn", "mosaicnet"),
            summary="PyTorch DistributedDataParallel: --ranks processes x --threads (Gloo)",
            layout="ranks",
        ),
    )
}

MODES: dict[str, Mode] = {
    m.name: m
    for m in (
        Mode(
            "sequential",
            "InProcessRunner",
            parallel=False,
            device="cpu",
            summary="this process, one torch thread",
        ),
        Mode(
            "threads",
            "InProcessRunner",
            parallel=True,
            device="cpu",
            summary="this process, N torch threads",
        ),
        Mode(
            "processes",
            "ProcessRunner",
            parallel=True,
            device="cpu",
            summary="N spawned worker processes, one torch thread each",
            layout="processes",
        ),
        Mode(
            "ranks",
            "RanksRunner",
            parallel=False,  # --workers means nothing to it: --ranks and --threads do
            device="cpu",
            summary="N torch.distributed ranks x T threads, cells sharded, gathered on rank 0",
            layout="ranks",
        ),
        Mode(
            "cuda",
            "CudaRunner",
            parallel=False,
            device="cuda",
            summary="batches on the first CUDA device",
        ),
    )
}

BACKENDS: dict[str, Backend] = {
    b.name: b
    for b in (
        Backend(
            "auto",
            cpu_only=False,
            summary="the fastest CPU backend, measured once per machine; eager on CUDA",
        ),
        Backend("eager", cpu_only=False, summary="the plain nn.Module"),
        Backend("channels-last", cpu_only=False, summary="NHWC memory format"),
        Backend("mkldnn", cpu_only=True, summary="oneDNN blocked layout, weights reordered once"),
        Backend("jit", cpu_only=True, summary="TorchScript, frozen and optimised for inference"),
    )
}

MODELS: dict[str, Model] = {
    m.name: m
    for m in (
        Model(
            "tinycnn",
            default_engine="numba",
            defaults={"filters": 8, "batch_size": 32, "epochs": 3, "lr": 0.05},
            summary="conv3x3 F → ReLU → maxpool 2 → FC 10, plain SGD",
            trainer="TinyCNNTrainer",
            outputs=("weights_init.npz", "weights_final.npz", "metrics.csv"),
            options=("filters",),
            shrink="use a smaller --filters or --batch-size",
        ),
        Model(
            "mosaicnet",
            default_engine="torch",
            # Adam at its usual 1e-3; MosaicNet has no width to choose.
            defaults={"filters": None, "batch_size": 64, "epochs": 2, "lr": 1e-3},
            summary="conv5x5 16 → pool → conv5x5 32 → pool → FC 1568-512-256-10, Adam",
            trainer="MosaicNetTrainer",
            outputs=("model.pt", "metrics.csv"),
        ),
    )
}

FIGURES: dict[str, Figure] = {
    f.id: f
    for f in (
        Figure(
            "train_speedup",
            "Training: speedup and efficiency",
            "Training speedup (left) and parallel efficiency (right) against threads, per "
            "engine, relative to the same engine, width and batch size at 1 thread, formed "
            "inside each paired block. Error bars are 95% intervals over blocks; the dashed "
            "line is ideal linear scaling.",
            tables=("summary",),
        ),
        Figure(
            "train_throughput",
            "Training: throughput per engine",
            "Training throughput per engine and thread count: geometric mean images/s over "
            "blocks, with 95% intervals. Engines compile and warm up before the clock starts; "
            "the warm-up is reported in the summary and in time to accuracy.",
            tables=("summary",),
        ),
        Figure(
            "time_to_accuracy",
            "Training: time to accuracy",
            "Time to accuracy of the full-length runs: test accuracy after each epoch against "
            "warm-up (compilation) plus cumulative training seconds, what a user waits "
            "(evaluation excluded), per engine at its largest thread count.",
            tables=("train",),
        ),
        Figure(
            "classify_speedup",
            "Classification: speedup and efficiency",
            "Classification speedup (left) and parallel efficiency (right) against workers, per "
            "mode, relative to the sequential mode on the same grid and batch size in the same "
            "block. Error bars are 95% intervals over blocks; the dashed line is ideal linear "
            "scaling.",
            tables=("summary",),
        ),
        Figure(
            "classify_cost_per_cell",
            "Classification: cost per cell",
            "Classification cost per mosaic cell (microseconds, median over repeats) against the "
            "number of cells, log-log, per mode and worker count. Flat lines mean the cost "
            "scales linearly.",
            tables=("summary",),
        ),
        Figure(
            "classify_end_to_end",
            "Classification: what users pay",
            "Steady-state cells/s (solid: classification only) against end-to-end cells/s "
            "(dashed: start-up, i.e. worker processes, weights and warm-up, plus one "
            "classification) over the mosaic size, with 95% intervals over blocks.",
            tables=("summary",),
        ),
        Figure(
            "roofline",
            "Roofline: achieved against attainable GFLOP/s",
            "Roofline (Williams, Waterman and Patterson, CACM 2009) per kind, log-log: achieved "
            "GFLOP/s (counted network FLOPs × throughput, 95% intervals over blocks) against "
            "arithmetic intensity (those FLOPs over the compulsory bytes a step or batch moves "
            "per image, the model's traffic model), one labelled point per engine or mode and "
            "parallelism. The lines are the roofs of each distinct probe (machine and thread "
            "count, or GPU), taken just before and after each timed region at its own threads: "
            "flat, the float32 matmul rate; solid slope, the main-memory bandwidth; dashed "
            "slope, the L2 bandwidth (STREAM triad), medians over the configurations probed "
            "there. A configuration's attainable rate is the lower of its compute roof and the "
            "bandwidth roof that applies: L2 when a step's working set fits the probed L2.",
            tables=("summary",),
        ),
        Figure(
            "layouts",
            "Layouts at equal cores",
            "Throughput of every way the study laid the same number of cores out: training "
            "(TinyCNN, images/s) as torch-ddp ranks x threads per rank beside one process of "
            "threads (numba, torch); classification (the largest grid, cells/s) as ranks beside "
            "worker processes and threads. Error bars are 95% intervals over blocks; the hatched "
            "foot of a ranked layout's bar is its communication share (all-reduce per step, or "
            "gather per repeat, over the whole step or repeat, median over blocks), which "
            "includes waiting for the slowest rank.",
            tables=("summary",),
        ),
        Figure(
            "machines_throughput",
            "Machines: throughput per engine and mode",
            "Throughput of every configuration on each machine (one bar per result set and "
            "machine; the config key compare_with adds sets from other machines or commits): "
            "geometric mean over that machine's own blocks, with 95% intervals.",
            tables=("machines",),
            section="machines",
        ),
        Figure(
            "machines_scaling",
            "Machines: scaling per machine",
            "Speedup over each machine's own baseline (the same engine at 1 thread, or "
            "sequential classification), formed inside that machine's paired blocks, against "
            "the threads or workers asked for, one line per machine and engine or mode on "
            "shared axes, with 95% intervals; the dashed line is ideal linear scaling.",
            tables=("machines",),
            section="machines",
        ),
        Figure(
            "machines_roofline",
            "Machines: fraction of each machine's own roofline",
            "Achieved GFLOP/s as a fraction of each job's own float32 matmul probe, per machine: "
            "a machine's roofline is never applied to another machine's rows. 95% intervals "
            "over blocks.",
            tables=("machines",),
            section="machines",
        ),
        Figure(
            "mask",
            "Mask of the largest mosaic",
            "Classification mask of the largest grid: each cell is green when MosaicNet "
            "classified the digit correctly and red when it did not, with the strength of the "
            "colour given by the confidence.",
            tables=(),
        ),
    )
}


# What a `cnnpar classify` run directory holds besides run.json (declared here, not in
# cnnpar.classify, so the workflow reads it without importing torch).
CLASSIFY_OUTPUTS: tuple[str, ...] = ("predictions.npz", "result.csv", "mask.png")


def names(registry: dict[str, object]) -> list[str]:
    """The names of a registry in declaration order (for CLI choices and messages)."""
    return list(registry)


def engines_for(model: str) -> list[str]:
    return [e.name for e in ENGINES.values() if model in e.models]


def gpu_engines() -> list[str]:
    """The engines that need a GPU (cluster jobs ask for one)."""
    return [e.name for e in ENGINES.values() if e.gpu]


def gpu_modes() -> list[str]:
    """The classify modes that need a GPU."""
    return [m.name for m in MODES.values() if m.gpu]


def table_figures() -> list[Figure]:
    """The figures drawn from the tables, in report order."""
    return [f for f in FIGURES.values() if f.from_tables]
