"""The study's plan: which timed runs a paired block holds, how they group into comparison
families, the order a family's runs take inside its one job, and their command lines.

A *family* is every configuration whose rates are divided by each other (every engine and
thread count of one filters/batch/seed; every mode and worker count of one grid/batch/seed).
The workflow runs each family of each block as one job that runs its members back to back in
the order planned here: the config's order (engine by engine, mode by mode, parallelism
ascending), reversed in even blocks, so a drift of the machine's speed within a block favours
neither side of a ratio (Hoefler & Belli, SC'15: pair in time). The order holds by
construction, one command after the other in one shell, not by scheduler priorities racing
for the timing lock; on a cluster the family is one submission, so a ratio never divides the
rates of two nodes.

An engine that switches threads in one process (registry `switches_threads`: numba, torch)
trains all its thread counts in one command, the counts taking turns in 0.1-second windows
(`cnnpar train --threads 1,2`); that command is one member of its family.

Nothing here imports torch or numba: the Snakefile reads it on every parse.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import product
from typing import Any

from cnnpar import params, registry
from cnnpar.measure.stopping import Precision
from cnnpar.measure.timing import alternating
from cnnpar.study.config import ConfigError, layouts, mirrors

# Wildcards of a timed run, in the order the output path names them.
TRAIN_KEYS = ("engine", "ranks", "threads", "filters", "batch", "seed")
CLASSIFY_KEYS = ("mode", "ranks", "workers", "grid", "batch", "seed")
# The wildcards naming a family (the last three of each run's keys).
TRAIN_FAMILY = ("filters", "batch", "seed")
CLASSIFY_FAMILY = ("grid", "batch", "seed")
# Where `cnnpar train --threads 1,2` puts each count in its --out template.
THREADS_FIELD = "{threads}"

# 'auto' in the config's thread, worker and rank counts: sized to the cores a job can use.
AUTO = "auto"
# A cluster job re-parses the Snakefile on its node: it must expand 'auto' as the submitter did.
SWEEP_CORES_ENV = "CNNPAR_SWEEP_CORES"

# No TinyCNN engine trains faster than this (images/s); a paired throughput run may run as many
# epochs as that rate fits in its time budget, so the budget, not the epoch count, ends it.
FASTEST_IMAGES_PER_S = 10_000_000


def usable_cores(cores: int | None, max_threads: int | None, cpus: int) -> int:
    """The cores one job of the study can really use: the smaller of Snakemake's --cores (and
    --max-threads) and `cpus`, the CPUs this machine lets the run use. On a cluster (no
    --cores) the profile's --max-threads, else `cpus`."""
    caps = [n for n in (cores, max_threads) if n]
    if cores:
        caps.append(cpus)
    return max(1, min(caps or [cpus]))


def auto_counts(usable: int) -> list[int]:
    """'auto' thread or worker counts: the powers of two up to `usable`, and `usable` itself
    when it is not one (8 -> [1, 2, 4, 8]; 6 -> [1, 2, 4, 6]; 1 -> [1])."""
    counts = [1 << k for k in range(usable.bit_length()) if 1 << k <= usable]
    return counts if counts[-1] == usable else [*counts, usable]


def auto_ranks(usable: int) -> list[int]:
    """'auto' rank counts: the same counts from 2 up (none on one core)."""
    return [n for n in auto_counts(usable) if n >= 2]


def expand_sweep(config: dict[str, Any], usable: int) -> dict[str, list[int] | int]:
    """Replace, in place, every 'auto' of a validated config by its counts for `usable` cores
    (train.tinycnn.threads and .ranks, classify.workers and .ranks, train.mosaicnet.threads:
    all the usable cores). Returns what was expanded, by dotted key."""
    expanded: dict[str, list[int] | int] = {}
    tinycnn, mosaicnet, classify = (
        config["train"]["tinycnn"],
        config["train"]["mosaicnet"],
        config["classify"],
    )
    for key, section, name, value in (
        ("train.tinycnn.threads", tinycnn, "threads", auto_counts(usable)),
        ("train.tinycnn.ranks", tinycnn, "ranks", auto_ranks(usable) or [2]),
        ("classify.workers", classify, "workers", auto_counts(usable)),
        ("classify.ranks", classify, "ranks", auto_ranks(usable) or [2]),
        ("train.mosaicnet.threads", mosaicnet, "threads", usable),
    ):
        if section[name] == AUTO:
            section[name] = expanded[key] = value
    return expanded


def precision(config: Mapping[str, Any]) -> Precision:
    """The study's stopping rule: a fixed number of blocks (config `blocks`), or the
    `precision` target with its fewest and most blocks."""
    if config.get("blocks"):
        return Precision.fixed(int(config["blocks"]))
    target = config["precision"]
    if target["min_blocks"] > target["max_blocks"]:
        raise ConfigError(
            "invalid config: config key 'precision.min_blocks' "
            f"({target['min_blocks']}) is above precision.max_blocks ({target['max_blocks']}); "
            "lower min_blocks or raise max_blocks"
        )
    return Precision(float(target["half_width"]), target["min_blocks"], target["max_blocks"])


def run_layouts(
    entry: registry.Engine | registry.Mode, cores: Sequence[int], ranks: Sequence[int]
) -> list[tuple[int, int]]:
    """(ranks, cores) of every run of an engine or mode: its layouts (study.config.layouts)
    with the threads per rank turned back into the run's cores."""
    found = layouts(cores, ranks, parallel=entry.parallel, ranked=entry.ranks)
    return [(r, r * t) for r, t in found]


def tinycnn_configs(engines: Sequence[str], tinycnn: Mapping[str, Any]) -> list[dict]:
    """One dict of wildcards per TinyCNN configuration (engine, ranks, threads = the run's
    cores, filters, batch, seed), engines in `engines`' order, parallelism as configured."""
    configs = []
    for engine in engines:
        shapes = run_layouts(registry.ENGINES[engine], tinycnn["threads"], tinycnn["ranks"])
        for (r, t), f, b, s in product(
            shapes, tinycnn["filters"], tinycnn["batch_sizes"], tinycnn["seeds"]
        ):
            configs.append(dict(engine=engine, ranks=r, threads=t, filters=f, batch=b, seed=s))
    return configs


def classify_configs(
    modes: Sequence[str], grids: Sequence[str], classify: Mapping[str, Any]
) -> list[dict]:
    """One dict of wildcards per classification configuration (workers = the run's cores),
    grids in the order given (smallest first), modes in `modes`' order."""
    configs = []
    for grid in grids:
        for mode in modes:
            shapes = run_layouts(registry.MODES[mode], classify["workers"], classify["ranks"])
            for (r, w), b, s in product(shapes, classify["batch_sizes"], classify["seeds"]):
                configs.append(dict(mode=mode, ranks=r, workers=w, grid=grid, batch=b, seed=s))
    return configs


# The one unbudgeted classification of each grid and seed (the report's mask and accuracy)
# runs in this mode at the widest worker count, or in the fallback where the config lacks it.
FULL_CLASSIFY_MODE = "threads"
FULL_CLASSIFY_FALLBACK = "sequential"


def full_classify_config(
    modes: Sequence[str], grid: str, seed: int | str, classify: Mapping[str, Any]
) -> dict[str, Any]:
    """The wildcards of the whole-mosaic classification of `grid` and `seed`: mode
    FULL_CLASSIFY_MODE at the largest of `classify["workers"]` when `modes` has it, else
    FULL_CLASSIFY_FALLBACK at 1 worker; the first of the batch sizes."""
    widest = FULL_CLASSIFY_MODE in modes
    return dict(
        mode=FULL_CLASSIFY_MODE if widest else FULL_CLASSIFY_FALLBACK,
        ranks=1,
        workers=max(int(w) for w in classify["workers"]) if widest else 1,
        grid=grid,
        batch=classify["batch_sizes"][0],
        seed=seed,
    )


def full_configs(configs: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The full-length (time to accuracy) runs: each engine, width, batch size and seed at its
    largest thread count (the first such configuration at a tie)."""
    largest: dict[tuple, Mapping[str, Any]] = {}
    for c in configs:
        key = (c["engine"], c["filters"], c["batch"], c["seed"])
        if key not in largest or c["threads"] > largest[key]["threads"]:
            largest[key] = c
    return list(largest.values())


def family_of(config: Mapping[str, Any], kind: str) -> tuple[str, ...]:
    """The family key of a configuration: its (filters, batch, seed) or (grid, batch, seed)."""
    keys = TRAIN_FAMILY if kind == "train" else CLASSIFY_FAMILY
    return tuple(str(config[k]) for k in keys)


def families(configs: Sequence[Mapping[str, Any]], kind: str) -> list[dict]:
    """One dict of family wildcards per family, in first-appearance order."""
    keys = TRAIN_FAMILY if kind == "train" else CLASSIFY_FAMILY
    seen = dict.fromkeys(family_of(c, kind) for c in configs)
    return [dict(zip(keys, family, strict=True)) for family in seen]


@dataclass(frozen=True)
class Run:
    """One command of a family job: one configuration, or every thread count of an engine
    that switches threads (`interleaved`), trained in alternating windows by one process."""

    kind: str  # "train" or "classify"
    configs: tuple[Mapping[str, Any], ...]  # wildcards of each configuration it records
    interleaved: bool = False

    @property
    def subject(self) -> str:
        return str(self.configs[0]["engine" if self.kind == "train" else "mode"])

    @property
    def ranks(self) -> int:
        return int(self.configs[0]["ranks"])

    @property
    def cores(self) -> int:
        """The cores the run uses: its widest configuration's."""
        key = "threads" if self.kind == "train" else "workers"
        return max(int(c[key]) for c in self.configs)

    def label(self) -> str:
        """'numba 1,2 threads', 'torch-ddp 2 ranks x 1 thread', 'processes 2 workers'."""
        unit = "thread" if self.kind == "train" else "worker"
        if self.ranks > 1:
            per = self.cores // self.ranks
            return f"{self.subject} {self.ranks} ranks x {per} thread{'s' * (per != 1)}"
        key = "threads" if self.kind == "train" else "workers"
        counts = ",".join(str(c[key]) for c in self.configs)
        return f"{self.subject} {counts} {unit}{'s' * (counts != '1')}"


def family_runs(
    kind: str,
    configs: Sequence[Mapping[str, Any]],
    block: int,
    switches_threads: Callable[[str], bool] | None = None,
) -> list[Run]:
    """The runs of one family in one block, in the order its job runs them.

    `configs` are the family's configurations in the config's order (tinycnn_configs,
    classify_configs). An engine that switches threads (`switches_threads(engine)`, by
    default the registry's) becomes one interleaved run at its first configuration's place.
    Odd blocks keep this order; even blocks reverse it, so each pair of a ratio runs A then B
    in one block and B then A in the next.
    """
    if switches_threads is None:

        def switches_threads(name: str) -> bool:
            return registry.ENGINES[name].switches_threads

    members: list[list[Mapping[str, Any]]] = []
    place: dict[str, int] = {}  # an interleaved engine's place in `members`
    for config in configs:
        engine = str(config.get("engine"))
        if kind == "train" and switches_threads(engine):
            if engine in place:
                members[place[engine]].append(config)
                continue
            place[engine] = len(members)
        members.append([config])
    runs = [Run(kind, tuple(m), interleaved=str(m[0].get("engine")) in place) for m in members]
    return alternating(runs, block - 1)  # block 1 keeps the order


# --- command lines -----------------------------------------------------------------------


def common_options(config: Mapping[str, Any]) -> list[str]:
    """Options every timed command of the study gets: data source and mirrors, the timing lock
    (only when the config names one: a default worked out here would follow this shell's
    TMPDIR), the interference thresholds and the machine label."""
    data = config["data"]
    options = ["--data-source", data["dir"] if data["source"] == "dir" else data["source"]]
    for url in mirrors(dict(config)):
        options += ["--mirror", url]
    timing = config["timing"]
    if timing["lock"]:
        options += ["--timing-lock", str(timing["lock"])]
    options += [
        "--max-others-share",
        str(timing["max_others_share"]),
        "--max-probe-change",
        str(timing["max_probe_change"]),
    ]
    if config["machine_label"]:
        options += ["--machine-label", str(config["machine_label"])]
    return options


def throughput_epochs(tinycnn: Mapping[str, Any]) -> int:
    """The epoch bound of a paired throughput run (`--epochs`; `--time-budget` stops it)."""
    budget_images = float(tinycnn["time_budget"]) * FASTEST_IMAGES_PER_S
    return max(int(tinycnn["epochs"]), -(-int(budget_images) // int(tinycnn["train_size"])))


def param_options(
    declared: Sequence[params.Param],
    section: Mapping[str, Any],
    wildcards: Mapping[str, Any],
    **values: Any,
) -> list[str]:
    """The run parameters' options, in declaration order: a sweep axis's value from the run's
    `wildcards`, another's from its config `section`, unless `values` gives it by name (None
    leaves the option out)."""
    options: list[str] = []
    for param in declared:
        if param.name in values:
            value = values[param.name]
        elif param.key is None:
            continue
        else:
            value = wildcards[param.axis] if param.sweep else section[param.key]
        if value is not None:
            options += param.argv(value)
    return options


def rank_launcher(launcher: str | None, ranks: int, threads: int) -> list[str]:
    """What starts a ranked command: nothing where cnnpar starts its ranks itself (a local
    run); `<launcher> --cpus-per-task=T -n R` where the cluster profile names a launcher
    (srun), so every rank is a task of the one SLURM job."""
    if not launcher or ranks == 1:
        return []
    return [*shlex.split(launcher), f"--cpus-per-task={threads}", "-n", str(ranks)]


def train_argv(
    run: Run,
    out: str,
    config: Mapping[str, Any],
    *,
    block: int | None,
    launcher: str | None = None,
) -> list[str]:
    """`cnnpar train` for one run: a paired throughput run of block `block` (stopped by the
    time budget), or with `block` None a full-length run for time to accuracy. `out` is the
    run directory, with THREADS_FIELD for an interleaved run's counts."""
    tinycnn = config["train"]["tinycnn"]
    first = run.configs[0]
    threads = ",".join(str(int(c["threads"]) // run.ranks) for c in run.configs)
    argv = [
        *rank_launcher(launcher, run.ranks, run.cores // run.ranks),
        "cnnpar", "train", "--model", "tinycnn", "--engine", run.subject,
        "--ranks", str(run.ranks), "--threads", threads,
        *param_options(
            params.TRAIN,
            tinycnn,
            first,
            # A throughput run's budget ends it, its epochs only bound it; a full-length run
            # trains its epochs, unbudgeted.
            epochs=throughput_epochs(tinycnn) if block else tinycnn["epochs"],
            time_budget=tinycnn["time_budget"] if block else None,
        ),
        *common_options(config),
    ]  # fmt: skip
    if block:
        argv += ["--block", str(block)]
    return [*argv, "--out", out]


def classify_argv(
    run: Run,
    out: str,
    weights: str,
    config: Mapping[str, Any],
    *,
    block: int | None,
    launcher: str | None = None,
) -> list[str]:
    """`cnnpar classify` for one run into run directory `out`: a paired run of block `block`
    (its time budget and repeats the config's), or with `block` None the one classification
    of the whole mosaic (no budget, one repeat; full_classify_config)."""
    from cnnpar.mosaic import parse_grid

    (c,) = run.configs
    rows, cols = parse_grid(str(c["grid"]))
    mode = registry.MODES[run.subject]
    if mode.ranks:
        layout = ["--ranks", str(run.ranks), "--threads", str(run.cores // run.ranks)]
    else:
        layout = ["--workers", str(run.cores)]
    whole = {} if block else {"repeats": 1, "time_budget": None}
    return [
        *rank_launcher(launcher, run.ranks, run.cores // run.ranks),
        "cnnpar", "classify", "--weights", weights, "--rows", str(rows), "--cols", str(cols),
        "--mode", run.subject, *layout,
        *param_options(params.CLASSIFY, config["classify"], c, **whole),
        *common_options(config), *(["--block", str(block)] if block else []), "--out", out,
    ]  # fmt: skip
