"""What the local and the SLURM workflow tests share: the config as Snakemake merges it, the job
counts it implies, the figures it draws, and the shim that makes one training job fail once."""

from __future__ import annotations

import os
import shlex
import shutil
from pathlib import Path

import yaml

from cnnpar import registry
from cnnpar.limits import usable_cpus
from cnnpar.study import plan
from cnnpar.study.config import unavailable_reason

REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO / "Snakefile"
TINY = REPO / "tests/data/config.tiny.yaml"
# The figures drawn from the tables (one PNG and one SVG each); mask.png comes on top.
FIGURE_STEMS = [figure.id for figure in registry.table_figures()]
SHIM_MESSAGE = "cnnpar test shim: injected one-time failure"


def load_config(path: Path, cores: int = 2) -> dict:
    """Config as Snakemake sees it: config/config.yaml with `path` deep-merged over it, and its
    'auto' counts expanded for a run with --cores `cores` on this machine (the tests run with
    --cores 2; the expansion itself is tested in test_plan.py)."""

    def merge(base: dict, new: dict) -> dict:
        for key, value in new.items():
            base[key] = merge(base.get(key, {}), value) if isinstance(value, dict) else value
        return base

    config = merge(
        yaml.safe_load((REPO / "config/config.yaml").read_text()), yaml.safe_load(path.read_text())
    )
    plan.expand_sweep(config, plan.usable_cores(cores, None, usable_cpus()))
    return config


def _shapes(entry: registry.Engine | registry.Mode, cores: list[int], ranks: list[int]) -> int:
    """Jobs per other parameter: a core count each (parallel), one (serial), or for a ranked
    entry one per (cores, ranks) pair whose rank count divides the cores evenly."""
    if entry.ranks:
        return sum(1 for c in cores for r in ranks if c % r == 0)
    return len(cores) if entry.parallel else 1


def expected_jobs(config: dict) -> dict[str, int]:
    """Job counts computed from the config by the rules the workflow documents: one job per
    comparison family (training: filters × batch × seed; classification: grid × batch × seed)
    and block runs every CPU engine or mode of the family; a GPU engine or mode runs one job per
    configuration and block, and is dropped where unavailable (a local run); engines and modes
    that are not parallel run once (at 1 thread or worker), ranked ones (torch-ddp, mode ranks)
    once per ranks x threads split of a core count; one full-length run per engine, one
    whole-mosaic classification per grid and seed, one MosaicNet per seed. Rules with no job
    are left out, as Snakemake's job stats leave them."""
    tiny, cls = config["train"]["tinycnn"], config["classify"]
    engines = [e for e in tiny["engines"] if unavailable_reason(e, "train engine") is None]
    modes = [m for m in cls["modes"] if unavailable_reason(m, "classify mode") is None]
    per_shape = len(tiny["filters"]) * len(tiny["batch_sizes"]) * len(tiny["seeds"])
    grids = {g if isinstance(g, str) else f"{g['rows']}x{g['cols']}" for g in cls["grids"]}
    per_mode = len(grids) * len(cls["batch_sizes"]) * len(cls["seeds"])
    # With a stopping rule, a dry run plans up to its first decision: min_blocks blocks, the
    # decision, and what needs no paired block; the rest waits for the checkpoint.
    checkpoint = not config.get("blocks")
    blocks = config["precision"]["min_blocks"] if checkpoint else config["blocks"]
    shapes = {e: _shapes(registry.ENGINES[e], tiny["threads"], tiny["ranks"]) for e in engines}
    modes_shapes = {m: _shapes(registry.MODES[m], cls["workers"], cls["ranks"]) for m in modes}
    cpu_train = any(n for e, n in shapes.items() if not registry.ENGINES[e].gpu)
    cpu_classify = any(n for m, n in modes_shapes.items() if not registry.MODES[m].gpu)
    gpu_train = sum(n for e, n in shapes.items() if registry.ENGINES[e].gpu) * per_shape
    gpu_classify = sum(n for m, n in modes_shapes.items() if registry.MODES[m].gpu) * per_mode
    jobs = {
        "verify_data": 1,
        "train_mosaicnet": len(cls["seeds"]),
        "train_family": per_shape * blocks * cpu_train,
        "train_gpu": gpu_train * blocks,
        "train_tinycnn_full": sum(1 for n in shapes.values() if n) * per_shape,
        "classify_family": per_mode * blocks * cpu_classify,
        "classify_gpu": gpu_classify * blocks,
        "classify_full": len(grids) * len(cls["seeds"]),
        "mask_figure": 1,
        "tables": 1,
        "figures": 1,
        "report": 1,
        "all": 1,
    }
    if checkpoint:
        jobs = {rule: n for rule, n in jobs.items() if rule not in AFTER_THE_BLOCKS}
        jobs["block_decision"] = 1
    return {rule: n for rule, n in jobs.items() if n}


# What a dry run cannot plan before a stopping decision: the jobs that read every block.
AFTER_THE_BLOCKS = (
    "train_tinycnn_full", "classify_full", "mask_figure", "tables", "figures", "report",
)  # fmt: skip


def paired_train_runs(config: dict) -> int:
    """Run directories of the paired training runs: one per configuration and block."""
    tiny = config["train"]["tinycnn"]
    engines = [e for e in tiny["engines"] if unavailable_reason(e, "train engine") is None]
    per_shape = len(tiny["filters"]) * len(tiny["batch_sizes"]) * len(tiny["seeds"])
    shapes = sum(_shapes(registry.ENGINES[e], tiny["threads"], tiny["ranks"]) for e in engines)
    return shapes * per_shape * config["blocks"]


def paired_classify_runs(config: dict) -> int:
    """Run directories of the paired classifications: one per configuration and block."""
    cls = config["classify"]
    modes = [m for m in cls["modes"] if unavailable_reason(m, "classify mode") is None]
    grids = {g if isinstance(g, str) else f"{g['rows']}x{g['cols']}" for g in cls["grids"]}
    per_mode = len(grids) * len(cls["batch_sizes"]) * len(cls["seeds"])
    shapes = sum(_shapes(registry.MODES[m], cls["workers"], cls["ranks"]) for m in modes)
    return shapes * per_mode * config["blocks"]


def fail_once_shim(directory: Path, marker: Path, path: str) -> str:
    """Write an executable `cnnpar` into `directory` and return `path` with it prepended.

    The shim fails the first paired `cnnpar train --model tinycnn ... --block N` it sees
    (creating `marker` atomically, so exactly one job fails, even across processes) and execs
    the real cnnpar,
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
        'case " $* " in *" --block "*) true ;; *) false ;; esac && '
        f"( set -C; : > {shlex.quote(str(marker))} ) 2> /dev/null; then\n"
        f"    echo {shlex.quote(SHIM_MESSAGE)} >&2\n"
        "    exit 1\n"
        "fi\n"
        f'exec {shlex.quote(os.path.abspath(real))} "$@"\n'
    )
    shim.chmod(0o755)
    return f"{directory}{os.pathsep}{path}"
