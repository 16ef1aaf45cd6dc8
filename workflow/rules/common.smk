# The job graph: the validated config expanded into one job per sweep combination, output
# paths and input functions. Config checks live in cnnpar.study.config and names in
# cnnpar.registry. No rules here (snakemake --lint wants functions and rules in separate files).

import math
import os
import re
import shlex
from functools import cache
from itertools import product
from pathlib import Path

import yaml
from snakemake.exceptions import WorkflowError
from snakemake.logging import logger

from cnnpar import registry
from cnnpar.errors import CnnparError
from cnnpar.mosaic import parse_grid
from cnnpar.record import RECORD_NAME
from cnnpar.study.config import (
    check_compare_with,
    check_results_dir,
    check_thread_cap,
    compare_with_inputs,
    layouts,
    mirrors,
    resolve_paths,
    usable,
    validate_config,
)
from cnnpar.study.tables import TABLE_NAMES

# Paths are resolved here, once, against the directory Snakemake runs in (the working
# directory while this file is parsed): jobs run in shadow directories.
try:
    validate_config(config, workflow.source_path("../schemas/config.schema.yaml"))
    resolve_paths(config, os.getcwd())
    check_results_dir(config["results"])
    # Other result sets for the report's Machines section, read once where the run starts (a
    # cluster job re-parsing this file only resolves them).
    COMPARE_WITH = check_compare_with(
        config["compare_with"], config["results"], read=not workflow.remote_exec
    )
except CnnparError as err:
    raise WorkflowError(str(err)) from None


def check_cores() -> None:
    """On start (a real run, DAG built, no job started): refuse thread or worker counts
    that --cores, --max-threads or --set-threads would silently change."""
    if workflow.touch:
        return
    asked = {
        "train.tinycnn.threads": max(c["threads"] for c in tinycnn_configs()),
        "classify.workers": max(c["workers"] for c in classify_configs()),
        "train.mosaicnet.threads": MOSAICNET["threads"],
    }
    settings = workflow.resource_settings
    timed = {rule.name for rule in workflow.rules if "bench" in rule.resources}
    overrides = settings.overwrite_threads.items()
    forced = [f"{rule}={n.value}" for rule, n in overrides if rule in timed]
    try:
        check_thread_cap(asked, settings.cores, settings.max_threads, forced)
    except CnnparError as err:
        raise WorkflowError(str(err)) from None


RESULTS = config["results"]
BLOCKS = list(range(1, config["blocks"] + 1))
TIMING = config["timing"]
TINYCNN = config["train"]["tinycnn"]
MOSAICNET = config["train"]["mosaicnet"]
CLASSIFY = config["classify"]

# envs/cnnpar.yaml installs this checkout as ${CNNPAR_SRC}: Snakemake copies the env file into
# .snakemake/conda/ before conda reads it, so a path relative to the file would point nowhere.
CHECKOUT = Path(workflow.source_path("../../pyproject.toml")).parent
os.environ.update(CNNPAR_SRC=str(CHECKOUT))


# --- the sweep grid ---------------------------------------------------------------------


def grid_name(grid: str | dict) -> str:
    """'200x300' for either spelling of a grid in the config."""
    return f"{grid['rows']}x{grid['cols']}" if isinstance(grid, dict) else grid


def grid_cells(name: str) -> int:
    rows, cols = parse_grid(name)
    return rows * cols


try:  # the schema checks the spelling; parse_grid also bounds the size
    GRIDS = sorted(
        dict.fromkeys(grid_name(g) for g in CLASSIFY["grids"]),
        key=lambda g: (grid_cells(g), g),
    )
except CnnparError as err:
    raise WorkflowError(f"invalid config: config key 'classify.grids': {err}") from None


def probe_gpus() -> bool:
    """Whether GPU engines and modes are checked against this machine's hardware: only when the
    jobs run here. A cluster submitter (or a job on a compute node, which must build the same
    graph) trusts the config; a GPU job on a node without one fails with a clear message.
    """
    if workflow.remote_exec:
        return False
    # None while the Snakefile is parsed: call this from input functions only.
    plugin = workflow.executor_plugin
    return plugin is None or plugin.name in ("local", "dryrun", "touch")


@cache
def sweep() -> tuple[list[str], list[str]]:
    """(train engines, classify modes) to run; decided once, when the DAG is built."""
    args = dict(strict=config["strict"], warn=logger.warning, probe=probe_gpus())
    try:
        engines = usable(TINYCNN["engines"], "train engine", **args)
        modes = usable(CLASSIFY["modes"], "classify mode", **args)
        mosaicnet = usable([MOSAICNET["engine"]], "mosaicnet engine", **args)
    except CnnparError as err:
        raise WorkflowError(str(err)) from None
    if not engines or not modes:
        cpu = [*(e for e, x in registry.ENGINES.items() if x.device == "cpu")]
        cpu += [m for m, x in registry.MODES.items() if x.device == "cpu"]
        raise WorkflowError(
            "nothing to run: every configured train engine or classify mode is unavailable "
            f"here; add one this machine can run ({', '.join(cpu)})"
        )
    if not mosaicnet:
        raise WorkflowError(
            f"mosaicnet engine {MOSAICNET['engine']!r} is not available; the classify jobs "
            "need MosaicNet weights: set train.mosaicnet.engine to torch"
        )
    return engines, modes


# Parameters are named in the path (key~value), so a result is self-describing; the tables
# read them from each job's run record, never from the path. A timed job runs once per paired
# block (block~N); a tinycnn configuration also has one full-length run for time to accuracy.
# threads (train) and workers (classify) are the job's cores; ranks~R splits them over R
# torch.distributed ranks (torch-ddp, mode ranks), ranks~1 everywhere else.
TINYCNN_TAIL = "engine~{engine}/ranks~{ranks}/threads~{threads}/filters~{filters}/batch~{batch}/seed~{seed}"
CLASSIFY_TAIL = (
    "mode~{mode}/ranks~{ranks}/workers~{workers}/grid~{grid}/batch~{batch}/seed~{seed}"
)
TINYCNN_DIR = f"{RESULTS}/train/tinycnn/{TINYCNN_TAIL}"
MOSAICNET_DIR = f"{RESULTS}/train/mosaicnet/seed~{{seed}}"
CLASSIFY_DIR = f"{RESULTS}/classify/{CLASSIFY_TAIL}"
BLOCK_DONE = f"{RESULTS}/blocks/block~{{block}}.done"
# A comparison family of one block: the timed jobs whose rates are divided by each other (every
# engine and thread count of one filters/batch/seed; every mode and worker count of one
# grid/batch/seed). Each is one Snakemake job group, closed by its marker file: on a cluster
# the group is one submission, so the jobs a ratio divides run on one node, one after another.
# (Groups only take effect on cluster executors; locally the marker is one more tiny job.)
TRAIN_FAMILY = "filters~{filters}/batch~{batch}/seed~{seed}"
CLASSIFY_FAMILY = "grid~{grid}/batch~{batch}/seed~{seed}"
TRAIN_FAMILY_DONE = f"{RESULTS}/blocks/block~{{block}}/train/{TRAIN_FAMILY}.done"
CLASSIFY_FAMILY_DONE = (
    f"{RESULTS}/blocks/block~{{block}}/classify/{CLASSIFY_FAMILY}.done"
)
TRAIN_GROUP = "train-block~{block}-filters~{filters}-batch~{batch}-seed~{seed}"
CLASSIFY_GROUP = "classify-block~{block}-grid~{grid}-batch~{batch}-seed~{seed}"


def family_group(group: str):
    """The job group of a timed job: its family's, except for a ranked job (ranks~R, R > 1),
    which is submitted on its own: srun starts its R tasks, and one group job cannot mix that
    multi-task launch with the family's one-task jobs. Its ratios still pair only within one
    machine (the tables check each job's machine identity)."""

    def of(wildcards) -> str | None:
        values = dict(wildcards.items())
        if int(values.get("ranks", 1)) > 1:
            return None
        return group.format(**values)

    return of


DATA_CHECK = f"{RESULTS}/data/verify.txt"
TABLES = f"{RESULTS}/tables"
FIGURE_DIR = f"{RESULTS}/figures"
LOGS = f"{RESULTS}/logs"
BENCHMARKS = f"{RESULTS}/benchmarks"
REPORT_HTML = f"{RESULTS}/report.html"
RECORD = RECORD_NAME  # written last by every train and classify job
TINYCNN_FILES = [*registry.MODELS["tinycnn"].outputs, RECORD]
MOSAICNET_FILES = [*registry.MODELS["mosaicnet"].outputs, RECORD]
CLASSIFY_FILES = [*registry.CLASSIFY_OUTPUTS, RECORD]

FIGURE_IDS = [figure.id for figure in registry.table_figures()]


def job_layouts(
    entry, cores: list[int], ranks: list[int], what: str
) -> list[tuple[int, int]]:
    """(ranks, cores) of each job of an engine or mode (study.config.layouts); a ranked one
    that no rank count fits is skipped with a warning."""
    found = layouts(cores, ranks, parallel=entry.parallel, ranked=entry.ranks)
    if not found:
        logger.warning(
            f"cnnpar: skipping {what} {entry.name!r}: no rank count in {ranks} divides a "
            f"core count in {cores}"
        )
    return [(r, r * t) for r, t in found]


@cache
def tinycnn_configs() -> list[dict]:
    """One dict of wildcards per tinycnn configuration (engine, ranks, threads = the job's
    cores, filters, batch, seed)."""
    configs = []
    for engine in sweep()[0]:
        shapes = job_layouts(
            registry.ENGINES[engine],
            TINYCNN["threads"],
            TINYCNN["ranks"],
            "train engine",
        )
        for (r, t), f, b, s in product(
            shapes, TINYCNN["filters"], TINYCNN["batch_sizes"], TINYCNN["seeds"]
        ):
            configs.append(
                dict(engine=engine, ranks=r, threads=t, filters=f, batch=b, seed=s)
            )
    return configs


@cache
def classify_configs() -> list[dict]:
    """One dict of wildcards per classify configuration (workers = the job's cores); the
    largest grids come last."""
    configs = []
    for grid in GRIDS:
        for mode in sweep()[1]:
            shapes = job_layouts(
                registry.MODES[mode],
                CLASSIFY["workers"],
                CLASSIFY["ranks"],
                "classify mode",
            )
            for (r, w), b, s in product(
                shapes, CLASSIFY["batch_sizes"], CLASSIFY["seeds"]
            ):
                configs.append(
                    dict(mode=mode, ranks=r, workers=w, grid=grid, batch=b, seed=s)
                )
    return configs


def tinycnn_full_configs() -> list[dict]:
    """The full-length (time to accuracy) runs: each engine at its largest thread count."""
    largest = {}
    for c in tinycnn_configs():
        key = (c["engine"], c["filters"], c["batch"], c["seed"])
        if (
            key not in largest or c["threads"] > largest[key]["threads"]
        ):  # first at a tie
            largest[key] = c
    return list(largest.values())


def engine_pattern(switches_threads: bool) -> str:
    """A wildcard constraint matching the engines that do (or do not) switch threads in one
    process (registry `switches_threads`): the rule that trains them."""
    names = [
        name
        for name, engine in registry.ENGINES.items()
        if engine.switches_threads == switches_threads
    ]
    return "|".join(re.escape(name) for name in names) or "(?!)"


@cache
def interleaved_threads() -> list[int]:
    """The thread counts one paired throughput job of an engine that switches threads trains
    in turn (`cnnpar train --threads 1,2`): every count of train.tinycnn.threads."""
    return sorted(
        {
            c["threads"]
            for c in tinycnn_configs()
            if registry.ENGINES[c["engine"]].switches_threads
        }
    ) or [1]


def interleaved_dir(wildcards) -> str:
    """`--out` of an interleaved job: its block's run directory, {threads} left for cnnpar."""
    values = dict(wildcards.items())
    run_dir = TINYCNN_DIR.format(**{**values, "ranks": 1, "threads": "{threads}"})
    return os.path.join(run_dir, f"block~{values['block']}")


# No TinyCNN engine trains faster than this (images/s); a paired throughput job may run as many
# epochs as that rate fits in its time budget, so the budget, not the epoch count, ends it.
FASTEST_IMAGES_PER_S = 10_000_000


def throughput_epochs() -> int:
    """The epoch bound of a paired throughput job (`--epochs`; `--time-budget` stops it)."""
    budget_images = TINYCNN["time_budget"] * FASTEST_IMAGES_PER_S
    return max(TINYCNN["epochs"], math.ceil(budget_images / TINYCNN["train_size"]))


def tinycnn_block_dirs(block: int) -> list[str]:
    return [f"{TINYCNN_DIR.format(**c)}/block~{block}" for c in tinycnn_configs()]


def classify_block_dirs(block: int) -> list[str]:
    return [f"{CLASSIFY_DIR.format(**c)}/block~{block}" for c in classify_configs()]


def tinycnn_full_dirs() -> list[str]:
    return [f"{TINYCNN_DIR.format(**c)}/full" for c in tinycnn_full_configs()]


def mosaicnet_dirs() -> list[str]:
    return [MOSAICNET_DIR.format(seed=s) for s in CLASSIFY["seeds"]]


def files(dirs: list[str], names: list[str]) -> list[str]:
    return [f"{d}/{name}" for d in dirs for name in names]


def figure_files(ext: str) -> list[str]:
    return [f"{FIGURE_DIR}/{figure_id}.{ext}" for figure_id in FIGURE_IDS]


# --- input functions (called when the DAG is built, once the executor is known) -------------


def block_members(wildcards) -> list[str]:
    """What block N waits for: block 0 is the set-up (data check, MosaicNet weights); block
    N >= 1 is the marker of every comparison family of that block."""
    block = int(wildcards.block)
    if block == 0:
        return [DATA_CHECK, *files(mosaicnet_dirs(), ["model.pt"])]
    train = {TRAIN_FAMILY_DONE.format(block=block, **c) for c in tinycnn_configs()}
    classify = {
        CLASSIFY_FAMILY_DONE.format(block=block, **c) for c in classify_configs()
    }
    return sorted(train) + sorted(classify)


def _in_family(config: dict, wildcards, keys: tuple[str, ...]) -> bool:
    return all(str(config[k]) == str(getattr(wildcards, k)) for k in keys)


def train_family_members(wildcards) -> list[str]:
    """The run records of one training comparison family in one block."""
    block = int(wildcards.block)
    configs = [
        c
        for c in tinycnn_configs()
        if _in_family(c, wildcards, ("filters", "batch", "seed"))
    ]
    return [f"{TINYCNN_DIR.format(**c)}/block~{block}/{RECORD}" for c in configs]


def classify_family_members(wildcards) -> list[str]:
    """The run records of one classification comparison family in one block."""
    block = int(wildcards.block)
    configs = [
        c
        for c in classify_configs()
        if _in_family(c, wildcards, ("grid", "batch", "seed"))
    ]
    return [f"{CLASSIFY_DIR.format(**c)}/block~{block}/{RECORD}" for c in configs]


TRAIN_KEYS = ("engine", "ranks", "threads", "filters", "batch", "seed")
CLASSIFY_KEYS = ("mode", "ranks", "workers", "grid", "batch", "seed")


@cache
def block_sequence() -> dict[tuple, int]:
    """Where each timed job of an odd block runs in its block: family by family (training,
    then classification), and inside a family engine by engine (mode by mode) in the config's
    order, thread (worker) count ascending. The jobs a ratio compares so run seconds apart,
    not minutes, and see the same state of the machine."""
    train = sorted(
        tinycnn_configs(), key=lambda c: (c["filters"], c["batch"], c["seed"])
    )
    classify = sorted(
        classify_configs(), key=lambda c: (c["grid"], c["batch"], c["seed"])
    )
    jobs = [("train", *(str(c[k]) for k in TRAIN_KEYS)) for c in train] + [
        ("classify", *(str(c[k]) for k in CLASSIFY_KEYS)) for c in classify
    ]
    return {job: index for index, job in enumerate(jobs)}


def block_priority(kind: str):
    """A timed job's Snakemake priority (higher runs first; only one timed job runs at a
    time): its place in block_sequence(), each family reversed in even blocks, so a pair runs
    A then B in one block and B then A in the next and a drift of the machine's speed within
    a block does not favour either side."""
    keys = TRAIN_KEYS if kind == "train" else CLASSIFY_KEYS
    family = 3  # the last three keys name the family

    def of(wildcards) -> int:
        order = block_sequence()
        # An interleaved training job (no ranks or threads wildcard) takes its first count's place.
        values = {
            "ranks": 1,
            "threads": interleaved_threads()[0],
            **dict(wildcards.items()),
        }
        job = (kind, *(str(values[k]) for k in keys))
        if int(wildcards.block) % 2 == 0:
            members = [
                j for j in order if j[0] == kind and j[-family:] == job[-family:]
            ]
            first = min(order[j] for j in members)
            position = first + len(members) - 1 - (order[job] - first)
        else:
            position = order[job]
        return len(order) - position

    return of


def previous_block(wildcards) -> str:
    """Block N's jobs start once block N-1 is done, so each block's jobs run back to back.
    ancient(): re-running one old job must not re-run every later block."""
    return ancient(BLOCK_DONE.format(block=int(wildcards.block) - 1))


def last_block(wildcards) -> str:
    """Full-length runs come after the paired blocks."""
    return ancient(BLOCK_DONE.format(block=BLOCKS[-1]))


def all_records(wildcards) -> list[str]:
    block_dirs = [
        d for b in BLOCKS for d in (*tinycnn_block_dirs(b), *classify_block_dirs(b))
    ]
    return files([*block_dirs, *tinycnn_full_dirs(), *mosaicnet_dirs()], [RECORD])


def compare_with_files(wildcards) -> list[str]:
    """The files of the `compare_with` result sets: the tables are redone when one changes."""
    return [f for _, path in COMPARE_WITH for f in compare_with_inputs(path)]


def report_record(wildcards) -> str:
    """The run record whose environment the report shows: the first MosaicNet training."""
    return f"{mosaicnet_dirs()[0]}/{RECORD}"


def largest_grid_mask(wildcards) -> str:
    """The mask.png of the largest grid (its first mode, fewest workers, first seed, block 1)."""
    first = next(c for c in classify_configs() if c["grid"] == GRIDS[-1])
    return f"{CLASSIFY_DIR.format(**first)}/block~1/mask.png"


def final_outputs(wildcards) -> list[str]:
    """The report and every job's files: a deleted intermediate is rebuilt, with what needs it."""
    block_dirs = [b for n in BLOCKS for b in tinycnn_block_dirs(n)]
    classify_dirs = [b for n in BLOCKS for b in classify_block_dirs(n)]
    return [
        REPORT_HTML,
        *(f"{TABLES}/{name}.csv" for name in TABLE_NAMES),
        *figure_files("png"),
        *figure_files("svg"),
        f"{FIGURE_DIR}/mask.png",
        *files([*block_dirs, *tinycnn_full_dirs()], TINYCNN_FILES),
        *files(classify_dirs, CLASSIFY_FILES),
        *files(mosaicnet_dirs(), MOSAICNET_FILES),
    ]


# --- parameters ------------------------------------------------------------------------------


def data_source() -> str:
    """The --data-source value every cnnpar command gets (quoted with :q in the rules)."""
    source = config["data"]["source"]
    return config["data"]["dir"] if source == "dir" else source


def mirror_options() -> str:
    """`--mirror URL` for each of data.mirror (quoted here: a list does not fit one {:q})."""
    return " ".join(f"--mirror {shlex.quote(url)}" for url in mirrors(config))


def machine_option() -> str:
    """`--machine-label LABEL` for every cnnpar job when the config names the machine."""
    label = config["machine_label"]
    return f"--machine-label {shlex.quote(label)}" if label else ""


def timing_lock() -> list[str]:
    """`--timing-lock PATH` when the config names a lock, else nothing: each cnnpar command
    then takes its own default where it runs. A default worked out here would follow this
    shell's TMPDIR, and a re-run from another shell would redo every finished job."""
    return ["--timing-lock", TIMING["lock"]] if TIMING["lock"] else []


def config_yaml() -> str:
    """The validated config (defaults filled in), as it is recorded in the report."""
    return yaml.safe_dump(dict(config), sort_keys=False, default_flow_style=None)


def figure_caption(figure_id: str) -> str:
    """The path of an .rst caption for `snakemake --report`, holding the registry's caption:
    report() takes captions only as files, and the wording lives once, in cnnpar.registry.
    """
    path = Path(".snakemake/cnnpar/captions") / f"{figure_id}.rst"
    text = registry.FIGURES[figure_id].caption + "\n"
    if not path.is_file() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(
            f".{path.name}.{os.getpid()}"
        )  # jobs may parse concurrently
        tmp.write_text(text)
        tmp.replace(path)
    return str(path.resolve())


# --- cluster resources -------------------------------------------------------------------------


def engine_gpus(wildcards) -> int:
    """GPUs a training job asks a cluster for: one where the registry says its engine runs on
    CUDA (the SLURM plugin turns gpu=1 into sbatch --gpus=1)."""
    return int(registry.ENGINES[wildcards.engine].gpu)


def mode_gpus(wildcards) -> int:
    """GPUs a classify job asks a cluster for, from its mode's registry entry."""
    return int(registry.MODES[wildcards.mode].gpu)


# --- layouts: ranks x threads per rank -------------------------------------------------------


def rank_threads(wildcards) -> int:
    """Threads per rank (per task on a cluster): the job's cores over its ranks."""
    cores = int(getattr(wildcards, "threads", None) or wildcards.workers)
    return cores // int(wildcards.ranks)


def train_layout_args(wildcards) -> str:
    """`cnnpar train`'s layout options: --ranks R --threads T (T per rank)."""
    return f"--ranks {int(wildcards.ranks)} --threads {rank_threads(wildcards)}"


def rank_tasks(wildcards) -> int:
    """Tasks a cluster job asks for (the SLURM plugin's `tasks`): one per rank."""
    return int(wildcards.ranks)


def rank_nodes(wildcards) -> int | None:
    """Nodes a ranked job spreads its tasks over (sbatch --nodes), when the config's `nodes`
    asks for more than one; None (no such resource) otherwise."""
    if int(wildcards.ranks) > 1 and config["nodes"] > 1:
        return config["nodes"]
    return None


def rank_launch(wildcards, resources) -> str:
    """What starts a ranked job's command: nothing where cnnpar starts its ranks itself (a
    local run); `<mpi> -n <tasks>` where the cluster profile sets the `mpi` resource (srun),
    as the SLURM executor plugin documents for multi-task jobs."""
    launcher = resources.get("mpi")
    if not launcher or int(wildcards.ranks) == 1:
        return ""
    return f"{launcher} -n {int(wildcards.ranks)} "


def classify_layout_args(wildcards) -> str:
    """`cnnpar classify`'s layout options: --ranks R --threads T in a ranked mode, else
    --workers W."""
    if registry.MODES[wildcards.mode].ranks:
        return f"--ranks {int(wildcards.ranks)} --threads {rank_threads(wildcards)}"
    return f"--workers {int(wildcards.workers)}"
