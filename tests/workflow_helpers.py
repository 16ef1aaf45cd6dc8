"""What the local and the SLURM workflow tests share: the config as Snakemake merges it, the job
counts it implies, the figures it draws, and the shim that makes one training job fail once."""

from __future__ import annotations

import os
import shlex
import shutil
from pathlib import Path

import yaml

from cnnpar import registry
from cnnpar.study.config import unavailable_reason

REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO / "Snakefile"
TINY = REPO / "tests/data/config.tiny.yaml"
# The figures drawn from the tables (one PNG and one SVG each); mask.png comes on top.
FIGURE_STEMS = [figure.id for figure in registry.table_figures()]
SHIM_MESSAGE = "cnnpar test shim: injected one-time failure"


def load_config(path: Path) -> dict:
    """Config as Snakemake sees it: config/config.yaml with `path` deep-merged over it."""

    def merge(base: dict, new: dict) -> dict:
        for key, value in new.items():
            base[key] = merge(base.get(key, {}), value) if isinstance(value, dict) else value
        return base

    return merge(
        yaml.safe_load((REPO / "config/config.yaml").read_text()), yaml.safe_load(path.read_text())
    )


def _shapes(entry: registry.Engine | registry.Mode, cores: list[int], ranks: list[int]) -> int:
    """Jobs per other parameter: a core count each (parallel), one (serial), or for a ranked
    entry one per (cores, ranks) pair whose rank count divides the cores evenly."""
    if entry.ranks:
        return sum(1 for c in cores for r in ranks if c % r == 0)
    return len(cores) if entry.parallel else 1


def expected_jobs(config: dict) -> dict[str, int]:
    """Job counts computed from the config by the rules the workflow documents: engines and
    modes that are not parallel run once (at 1 thread or worker), engines that switch threads
    in one process once for all their thread counts, ranked ones (torch-ddp, mode
    ranks) once per ranks x threads split of a core count, GPU ones are dropped where
    unavailable (a local run), one MosaicNet per seed, and one marker per comparison family
    (training: filters × batch × seed; classification: grid × batch × seed) and block."""
    tiny, cls = config["train"]["tinycnn"], config["classify"]
    engines = [e for e in tiny["engines"] if unavailable_reason(e, "train engine") is None]
    modes = [m for m in cls["modes"] if unavailable_reason(m, "classify mode") is None]
    n_train = 0
    n_interleaved = 0  # engines that switch threads: one job for all their thread counts
    trained = 0  # engines with at least one job (a full-length run each)
    per_shape = len(tiny["filters"]) * len(tiny["batch_sizes"]) * len(tiny["seeds"])
    for engine in engines:
        shapes = _shapes(registry.ENGINES[engine], tiny["threads"], tiny["ranks"])
        trained += bool(shapes)
        if registry.ENGINES[engine].switches_threads:
            n_interleaved += per_shape
        else:
            n_train += shapes * per_shape
    n_classify = 0
    grids = {g if isinstance(g, str) else f"{g['rows']}x{g['cols']}" for g in cls["grids"]}
    for mode in modes:
        shapes = _shapes(registry.MODES[mode], cls["workers"], cls["ranks"])
        n_classify += shapes * len(grids) * len(cls["batch_sizes"]) * len(cls["seeds"])
    blocks = config["blocks"]
    n_full = trained * len(tiny["filters"]) * len(tiny["batch_sizes"]) * len(tiny["seeds"])
    # One job group per comparison family and block, closed by a marker job.
    train_families = len(tiny["filters"]) * len(tiny["batch_sizes"]) * len(tiny["seeds"])
    classify_families = len(grids) * len(cls["batch_sizes"]) * len(cls["seeds"])
    return {
        "verify_data": 1,
        "train_mosaicnet": len(cls["seeds"]),
        "block_done": blocks + 1,
        "train_family_done": train_families * blocks if engines else 0,
        "classify_family_done": classify_families * blocks if modes else 0,
        "train_tinycnn": n_train * blocks,
        "train_tinycnn_interleaved": n_interleaved * blocks,
        "train_tinycnn_full": n_full,
        "classify": n_classify * blocks,
        "mask_figure": 1,
        "tables": 1,
        "figures": 1,
        "report": 1,
        "all": 1,
    }


def paired_train_runs(config: dict) -> int:
    """Run directories of the paired training jobs: one per job, except that an interleaved
    job (an engine that switches threads) writes one per thread count."""
    jobs = expected_jobs(config)
    threads = len(set(config["train"]["tinycnn"]["threads"]))
    return jobs["train_tinycnn"] + jobs["train_tinycnn_interleaved"] * threads


def fail_once_shim(directory: Path, marker: Path, path: str) -> str:
    """Write an executable `cnnpar` into `directory` and return `path` with it prepended.

    The shim fails the first `cnnpar train --model tinycnn ...` it sees (creating `marker`
    atomically, so exactly one job fails, even across processes) and execs the real cnnpar,
    found on `path`, for everything else. Jobs inherit PATH, on SLURM too (--export=ALL).
    """
    real = shutil.which("cnnpar", path=path)
    if real is None:
        raise FileNotFoundError(f"no cnnpar on PATH {path!r}")
    directory.mkdir(parents=True, exist_ok=True)
    shim = directory / "cnnpar"
    shim.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = train ] && [ "$2" = --model ] && [ "$3" = tinycnn ] && '
        f"( set -C; : > {shlex.quote(str(marker))} ) 2> /dev/null; then\n"
        f"    echo {shlex.quote(SHIM_MESSAGE)} >&2\n"
        "    exit 1\n"
        "fi\n"
        f'exec {shlex.quote(os.path.abspath(real))} "$@"\n'
    )
    shim.chmod(0o755)
    return f"{directory}{os.pathsep}{path}"
