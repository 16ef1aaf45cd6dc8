"""`cnnpar bench classify`: MosaicNet classification throughput of the modes, as a small
built-in study.

Every block classifies one mosaic in each mode at each worker count, in the plan's order
(reversed in even blocks), each run through `cnnpar.classify.run` (start-up, then `repeats`
timed classifications) writing an ordinary `cnnpar classify` record with its block number; the
study's tables summarise them (`cnnpar.bench.common`). Without `weights`, a seeded random-init
MosaicNet: throughput does not depend on the weights' values.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from io import BytesIO
from pathlib import Path
from typing import Any

import pandas as pd

from cnnpar import classify, io
from cnnpar.bench import common
from cnnpar.measure.interference import DEFAULT_LOCK
from cnnpar.measure.machine import this_machine
from cnnpar.registry import MODES
from cnnpar.study import plan

# One-process modes (their workers aside): the bench compares modes at worker counts.
MODE_CHOICES = tuple(name for name, m in MODES.items() if not m.ranks)
DEFAULT_MODES = tuple(name for name in MODE_CHOICES if MODES[name].device == "cpu")
BATCH_SIZE = 256  # where the target is set


def random_weights(path: Path, seed: int = 0) -> Path:
    """A seeded random-init MosaicNet state_dict at `path`."""
    import torch

    from cnnpar.nets.mosaicnet import MosaicNet

    torch.manual_seed(seed)
    buffer = BytesIO()  # written through io, so a full disk fails with one line
    torch.save(MosaicNet().state_dict(), buffer)
    io.write_bytes(path, buffer.getvalue())
    return path


def classify_bench(
    modes: Sequence[str] = DEFAULT_MODES,
    workers: Sequence[int] = (1, 2),
    blocks: int = 5,
    rows: int = 100,
    cols: int = 100,
    repeats: int = 3,
    weights: str | os.PathLike[str] | None = None,
    *,
    out: str | os.PathLike[str] | None = None,
    csv_path: str | os.PathLike[str] | None = None,
    timing_lock: str | None = str(DEFAULT_LOCK),
    echo: Callable[[str], None] = common.say,
) -> tuple[pd.DataFrame, list[common.Check]]:
    """Classify a `rows` x `cols` mosaic at B=256 in every mode at every worker count
    (`workers`; one for sequential), `repeats` timed times per run, in `blocks` blocks.
    Writes the run directories into `out` (kept; new or empty) or a temporary directory, the
    summary rows to `csv_path`, and prints them and the target. Returns the summary rows and
    the target's check. Raises BenchError or ClassifyError (one line, before any work) for a
    bad argument, and the run's own CnnparError when a run fails."""
    modes, workers = list(modes), [int(w) for w in workers]
    common.check_names(modes, MODE_CHOICES, "--modes")
    common.check_counts(workers, "--workers")
    if blocks < 1 or repeats < 1:
        raise common.BenchError(f"--blocks and --repeats must be >= 1 (got {blocks}, {repeats})")
    if weights is not None and not Path(weights).is_file():
        raise common.BenchError(f"--weights {weights} is not a file")
    section = {"workers": workers, "ranks": [], "batch_sizes": [BATCH_SIZE], "seeds": [0]}
    configs = plan.classify_configs(modes, [f"{rows}x{cols}"], section)

    def config(
        c: Mapping[str, Any], block: int, run_dir: Path | None, path: Path
    ) -> classify.ClassifyConfig:
        return classify.ClassifyConfig(
            weights=path,
            rows=rows,
            cols=cols,
            out=run_dir,
            mode=str(c["mode"]),
            workers=int(c["workers"]),
            batch_size=int(c["batch"]),
            seed=int(c["seed"]),
            repeats=repeats,
            block=block,
            timing_lock=timing_lock,
        )

    for c in configs:  # sizes, memory, a GPU for cuda: refused before any work
        classify.validate(config(c, 1, None, Path(weights or "weights.pt")))
    csv_target = common.check_csv_path(csv_path)
    common.check_out(out)

    machine = this_machine()
    echo(f"cnnpar bench classify on {machine.name}")
    echo(
        f"{blocks} block(s), each classifying a {rows}x{cols} mosaic at B={BATCH_SIZE} "
        f"{repeats} time(s) per mode and worker count"
    )
    echo(
        "after its start-up, in the plan's order (reversed in even blocks), with "
        + (f"weights {weights}" if weights else "random-init weights (seed 0)")
    )
    with common.output_directory(out) as directory:
        path = Path(weights) if weights else random_weights(directory / "random_init.pt")

        def run_one(run: plan.Run, block: int, stem: Path) -> None:
            (c,) = run.configs
            classify.run(config(c, block, Path(f"{stem}-workers{c['workers']}"), path))

        common.run_blocks("classify", configs, blocks, run_one, directory, echo)
        return common.finish(
            "classify", directory, out is not None, csv_target, machine.cpu_model, echo
        )
