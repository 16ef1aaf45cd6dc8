# The job graph: the validated config expanded into one job per sweep combination, output
# paths and input functions. Config checks live in cnnpar.study.config and names in
# cnnpar.registry. No rules here (snakemake --lint wants functions and rules in separate files).

import json
import os
import re
import shlex
from functools import cache
from pathlib import Path

import yaml
from snakemake.exceptions import WorkflowError
from snakemake.logging import logger

from cnnpar import registry
from cnnpar.errors import CnnparError
from cnnpar.limits import usable_cpus
from cnnpar.measure.code import code_versions
from cnnpar.mosaic import parse_grid
from cnnpar.record import RECORD_NAME
from cnnpar.study import cost, plan
from cnnpar.study import snakemake_api as smk
from cnnpar.study.config import (
    check_compare_with,
    check_results_dir,
    check_thread_cap,
    compare_with_inputs,
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
    # 'auto' counts follow the cores a job can use; a cluster job expands them as its
    # submitter did (it inherits the submitter's environment).
    if smk.is_remote_job(workflow) and os.environ.get(plan.SWEEP_CORES_ENV):
        SWEEP_CORES = int(os.environ[plan.SWEEP_CORES_ENV])
    else:
        threads = smk.thread_settings(workflow)
        SWEEP_CORES = plan.usable_cores(
            threads.cores, threads.max_threads, usable_cpus()
        )
        os.environ.update({plan.SWEEP_CORES_ENV: str(SWEEP_CORES)})
    plan.expand_sweep(config, SWEEP_CORES)
    check_results_dir(config["results"])
    # Other result sets for the report's Machines section, read once where the run starts (a
    # cluster job re-parsing this file only resolves them).
    COMPARE_WITH = check_compare_with(
        config["compare_with"], config["results"], read=not smk.is_remote_job(workflow)
    )
except CnnparError as err:
    raise WorkflowError(str(err)) from None


def print_estimate() -> None:
    """Before the first job: the timed jobs and the estimated wall time (cnnpar.study.cost)."""
    engines, modes = sweep()
    estimate = cost.estimate_study(
        config, engines, modes, GRIDS, TIMED_BENCHMARKS, BENCHMARKS
    )
    logger.info(estimate.text())


def check_cores() -> None:
    """On start (a real run, DAG built, no job started): refuse thread or worker counts
    that --cores, --max-threads or --set-threads would silently change."""
    if smk.is_touch(workflow):
        return
    asked = {
        "train.tinycnn.threads": max(c["threads"] for c in tinycnn_configs()),
        "classify.workers": max(c["workers"] for c in classify_configs()),
        "train.mosaicnet.threads": MOSAICNET["threads"],
    }
    settings = smk.thread_settings(workflow)
    timed = smk.rules_with_resource(workflow, "bench")
    overrides = settings.overrides.items()
    forced = [f"{rule}={n}" for rule, n in overrides if rule in timed]
    try:
        check_thread_cap(asked, settings.cores, settings.max_threads, forced)
    except CnnparError as err:
        raise WorkflowError(str(err)) from None


RESULTS = config["results"]
try:
    PRECISION = plan.precision(config)
except CnnparError as err:
    raise WorkflowError(str(err)) from None
TIMING = config["timing"]
TINYCNN = config["train"]["tinycnn"]
MOSAICNET = config["train"]["mosaicnet"]
CLASSIFY = config["classify"]

# The version of the code each kind of timed job measures (cnnpar.measure.code): a rule
# parameter, so Snakemake re-runs exactly the timed jobs whose code changed.
CODE = code_versions()

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
    if smk.is_remote_job(workflow):
        return False
    # None while the Snakefile is parsed: call this from input functions only.
    return smk.local_executor(smk.executor_name(workflow))


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
# read them from each job's run record, never from the path. A timed run runs once per paired
# block (block~N); a tinycnn configuration also has one full-length run for time to accuracy.
# threads (train) and workers (classify) are the run's cores; ranks~R splits them over R
# torch.distributed ranks (torch-ddp, mode ranks), ranks~1 everywhere else.
TINYCNN_TAIL = "engine~{engine}/ranks~{ranks}/threads~{threads}/filters~{filters}/batch~{batch}/seed~{seed}"
CLASSIFY_TAIL = (
    "mode~{mode}/ranks~{ranks}/workers~{workers}/grid~{grid}/batch~{batch}/seed~{seed}"
)
TINYCNN_DIR = f"{RESULTS}/train/tinycnn/{TINYCNN_TAIL}"
MOSAICNET_DIR = f"{RESULTS}/train/mosaicnet/seed~{{seed}}"
CLASSIFY_DIR = f"{RESULTS}/classify/{CLASSIFY_TAIL}"
# The one unbudgeted classification of each whole mosaic: the report's mask and the accuracy.
CLASSIFY_FULL_DIR = f"{RESULTS}/classify/full/grid~{{grid}}/seed~{{seed}}"
# A comparison family of one block (cnnpar.study.plan): the timed runs whose rates are divided
# by each other. Each is one job that runs its members back to back in the planned order.
TRAIN_FAMILY = "filters~{filters}/batch~{batch}/seed~{seed}"
CLASSIFY_FAMILY = "grid~{grid}/batch~{batch}/seed~{seed}"
LOGS = f"{RESULTS}/logs"
FAMILY_LOGS = {
    "train": f"{LOGS}/train/tinycnn/block~{{block}}/{TRAIN_FAMILY}.log",
    "classify": f"{LOGS}/classify/block~{{block}}/{CLASSIFY_FAMILY}.log",
}
RUN_LOGS = {
    ("train", False): f"{LOGS}/train/tinycnn/{TINYCNN_TAIL}/block~{{block}}.log",
    ("train", True): f"{LOGS}/train/tinycnn/{TINYCNN_TAIL}/full.log",
    ("classify", False): f"{LOGS}/classify/{CLASSIFY_TAIL}/block~{{block}}.log",
    ("classify", True): f"{LOGS}/classify/full/grid~{{grid}}/seed~{{seed}}.log",
}

DATA_CHECK = f"{RESULTS}/data/verify.txt"
TABLES = f"{RESULTS}/tables"
FIGURE_DIR = f"{RESULTS}/figures"
BENCHMARKS = f"{RESULTS}/benchmarks"
# Where Snakemake writes each timed job's wall time (read back by the cost estimate).
TIMED_BENCHMARKS = {
    "train_family": f"{BENCHMARKS}/train/tinycnn/block~{{block}}/{TRAIN_FAMILY}.tsv",
    "train_gpu": f"{BENCHMARKS}/train/tinycnn/{TINYCNN_TAIL}/block~{{block}}.tsv",
    "train_tinycnn_full": f"{BENCHMARKS}/train/tinycnn/{TINYCNN_TAIL}/full.tsv",
    "train_mosaicnet": f"{BENCHMARKS}/train/mosaicnet/seed~{{seed}}.tsv",
    "classify_family": f"{BENCHMARKS}/classify/block~{{block}}/{CLASSIFY_FAMILY}.tsv",
    "classify_gpu": f"{BENCHMARKS}/classify/{CLASSIFY_TAIL}/block~{{block}}.tsv",
    "classify_full": f"{BENCHMARKS}/classify/full/grid~{{grid}}/seed~{{seed}}.tsv",
}
REPORT_HTML = f"{RESULTS}/report.html"
RECORD = RECORD_NAME  # written last by every train and classify job
TINYCNN_FILES = [*registry.MODELS["tinycnn"].outputs, RECORD]
MOSAICNET_FILES = [*registry.MODELS["mosaicnet"].outputs, RECORD]
CLASSIFY_FILES = [*registry.CLASSIFY_OUTPUTS, RECORD]

FIGURE_IDS = [figure.id for figure in registry.table_figures()]


def warn_unplaced(entries, cores: list[int], ranks: list[int], what: str) -> None:
    """Warn about a ranked engine or mode that no rank count fits (it gets no run)."""
    for entry in entries:
        if not plan.run_layouts(entry, cores, ranks):
            logger.warning(
                f"cnnpar: skipping {what} {entry.name!r}: no rank count in {ranks} divides "
                f"a core count in {cores}"
            )


@cache
def tinycnn_configs() -> list[dict]:
    """One dict of wildcards per tinycnn configuration (engine, ranks, threads = the run's
    cores, filters, batch, seed)."""
    engines = sweep()[0]
    entries = [registry.ENGINES[e] for e in engines]
    warn_unplaced(entries, TINYCNN["threads"], TINYCNN["ranks"], "train engine")
    return plan.tinycnn_configs(engines, TINYCNN)


@cache
def classify_configs() -> list[dict]:
    """One dict of wildcards per classify configuration (workers = the run's cores); the
    largest grids come last."""
    modes = sweep()[1]
    entries = [registry.MODES[m] for m in modes]
    warn_unplaced(entries, CLASSIFY["workers"], CLASSIFY["ranks"], "classify mode")
    return plan.classify_configs(modes, GRIDS, CLASSIFY)


def tinycnn_full_configs() -> list[dict]:
    """The full-length (time to accuracy) runs: each engine at its largest thread count."""
    return plan.full_configs(tinycnn_configs())


def classify_full_config(grid: str, seed: str) -> dict:
    """The whole-mosaic classification of a grid and seed (cnnpar.study.plan): mode threads
    at the widest worker count, or sequential when the config has no threads mode."""
    return plan.full_classify_config(CLASSIFY["modes"], grid, seed, CLASSIFY)


# Its cores: the same for every grid and seed.
CLASSIFY_FULL_THREADS = int(classify_full_config(GRIDS[0], "0")["workers"])


# --- family jobs -------------------------------------------------------------------------------
# A family job's outputs must be known when the Snakefile is parsed, before the executor is, so
# it holds the CPU engines and modes (always available). A GPU run, whose availability is
# decided once the executor is known (a cluster submitter trusts the config), is a job of its
# own; its ratios are still formed inside its block.
CPU_ENGINES = [e for e in TINYCNN["engines"] if registry.ENGINES[e].device == "cpu"]
CPU_MODES = [m for m in CLASSIFY["modes"] if registry.MODES[m].device == "cpu"]
GPU_ENGINE_PATTERN = "|".join(re.escape(e) for e in registry.gpu_engines()) or "(?!)"
GPU_MODE_PATTERN = "|".join(re.escape(m) for m in registry.gpu_modes()) or "(?!)"
# The members of every family (each family has the same ones, for its own filters/batch/seed
# or grid/batch/seed), with the family's keys left as wildcards.
TRAIN_MEMBERS = plan.tinycnn_configs(
    CPU_ENGINES,
    {
        **TINYCNN,
        "filters": ["{filters}"],
        "batch_sizes": ["{batch}"],
        "seeds": ["{seed}"],
    },
)
CLASSIFY_MEMBERS = plan.classify_configs(
    CPU_MODES, ["{grid}"], {**CLASSIFY, "batch_sizes": ["{batch}"], "seeds": ["{seed}"]}
)


def member_files(
    template: str, members: list[dict], names: list[str]
) -> dict[str, str]:
    """Named outputs of a family job: each member's files, its family keys left as wildcards."""
    out = {}
    for i, member in enumerate(members):
        run_dir = f"{template.format(**member)}/block~{{block}}"
        for name in names:
            out[f"{name.split('.')[0]}_{i}"] = f"{run_dir}/{name}"
    return out


def family_members(kind: str, wildcards) -> list[dict]:
    """The configurations of one family job (its wildcards filled in)."""
    values = dict(wildcards.items())
    members = TRAIN_MEMBERS if kind == "train" else CLASSIFY_MEMBERS
    return [{k: str(v).format(**values) for k, v in m.items()} for m in members]


def logged(argvs: list[list[str]], log: str) -> str:
    """Commands as one shell line that stops at the first failure, each run by logged.sh into
    the job's log (the first truncates it, the others append)."""
    lines = []
    for i, argv in enumerate(argvs):
        append = "-a " if i else ""
        lines.append(f"{LOGGED} {append}{shlex.quote(log)} {shlex.join(argv)}")
    return " && ".join(lines)


def family_script(kind: str):
    """A family job's commands in planned order, one shell line (cnnpar.study.plan)."""
    log = FAMILY_LOGS[kind]

    def of(wildcards, resources) -> str:
        block = int(wildcards.block)
        launcher = resources.get("mpi")
        runs = plan.family_runs(kind, family_members(kind, wildcards), block)
        argvs = []
        for run in runs:
            if kind == "train":
                out = TINYCNN_DIR.format(
                    **(
                        {**run.configs[0], "threads": "{threads}"}
                        if run.interleaved
                        else run.configs[0]
                    )
                )
                argvs.append(
                    plan.train_argv(
                        run,
                        f"{out}/block~{block}",
                        config,
                        block=block,
                        launcher=launcher,
                    )
                )
            else:
                out = f"{CLASSIFY_DIR.format(**run.configs[0])}/block~{block}"
                weights = f"{MOSAICNET_DIR.format(seed=wildcards.seed)}/model.pt"
                argvs.append(
                    plan.classify_argv(
                        run, out, weights, config, block=block, launcher=launcher
                    )
                )
        return logged(argvs, log.format(**dict(wildcards.items())))

    return of


def family_tasks(kind: str) -> int:
    """Tasks a family job asks a cluster for: its widest ranked member's ranks (1 if none)."""
    members = TRAIN_MEMBERS if kind == "train" else CLASSIFY_MEMBERS
    return max([int(m["ranks"]) for m in members] or [1])


def family_threads(kind: str) -> int:
    """The cores a family job reserves: its widest member's."""
    members = TRAIN_MEMBERS if kind == "train" else CLASSIFY_MEMBERS
    key = "threads" if kind == "train" else "workers"
    return max([int(m[key]) for m in members] or [1])


# The cluster profile reads these (its resource expressions expand environment variables):
# it names the launcher of a family's ranked members only where the family has some, since
# the SLURM plugin refuses `mpi` on a one-task job.
os.environ.update(
    CNNPAR_TRAIN_TASKS=str(family_tasks("train")),
    CNNPAR_CLASSIFY_TASKS=str(family_tasks("classify")),
)


def family_cpus_per_task(kind: str) -> int:
    """cpus_per_task of a family job on a cluster: its cores over its tasks on one node (a
    ranked member's srun then gives each rank its share); on several nodes each task gets them
    all, so the one-process members on the first node still have their cores."""
    if config["nodes"] > 1 and family_tasks(kind) > 1:
        return family_threads(kind)
    return max(1, family_threads(kind) // family_tasks(kind))


def family_nodes(kind: str) -> int | None:
    """Nodes a family job spreads its ranked members over, when the config asks for several."""
    return config["nodes"] if config["nodes"] > 1 and family_tasks(kind) > 1 else None


def tinycnn_block_dirs(block: int) -> list[str]:
    return [f"{TINYCNN_DIR.format(**c)}/block~{block}" for c in tinycnn_configs()]


def classify_block_dirs(block: int) -> list[str]:
    return [f"{CLASSIFY_DIR.format(**c)}/block~{block}" for c in classify_configs()]


def tinycnn_full_dirs() -> list[str]:
    return [f"{TINYCNN_DIR.format(**c)}/full" for c in tinycnn_full_configs()]


def classify_full_dirs() -> list[str]:
    return [
        CLASSIFY_FULL_DIR.format(grid=g, seed=s)
        for g in GRIDS
        for s in CLASSIFY["seeds"]
    ]


def mosaicnet_dirs() -> list[str]:
    return [MOSAICNET_DIR.format(seed=s) for s in CLASSIFY["seeds"]]


def files(dirs: list[str], names: list[str]) -> list[str]:
    return [f"{d}/{name}" for d in dirs for name in names]


def figure_files(ext: str) -> list[str]:
    return [f"{FIGURE_DIR}/{figure_id}.{ext}" for figure_id in FIGURE_IDS]


# --- input functions (called when the DAG is built, once the executor is known) -------------


DECISION = f"{RESULTS}/blocks/decision~{{block}}.json"


def planned_blocks() -> list[int]:
    """The paired blocks the study runs: a fixed number, or min_blocks and then one more each
    time the stopping rule (checkpoint block_decision, cnnpar.study.stop) says the headline
    intervals are still wider than the target, up to max_blocks. Call from input functions:
    a decision not yet made raises Snakemake's IncompleteCheckpointException, which schedules
    it and re-evaluates the caller afterwards."""
    n = PRECISION.min_blocks
    while n < PRECISION.max_blocks:
        decision = checkpoints.block_decision.get(block=n).output.decision
        if json.loads(Path(decision).read_text())["stop"]:
            break
        n += 1
    return list(range(1, n + 1))


def records_through(last: int) -> list[str]:
    """The run records of blocks 1..`last` (every kind, every configuration)."""
    block_dirs = [
        d
        for b in range(1, last + 1)
        for d in (*tinycnn_block_dirs(b), *classify_block_dirs(b))
    ]
    return files(block_dirs, [RECORD])


def decision_records(wildcards) -> list[str]:
    """What the stopping decision after block N reads: every paired record so far."""
    return records_through(int(wildcards.block))


def all_records(wildcards) -> list[str]:
    paired = records_through(planned_blocks()[-1])
    unpaired = [*tinycnn_full_dirs(), *classify_full_dirs(), *mosaicnet_dirs()]
    return [*paired, *files(unpaired, [RECORD])]


def compare_with_files(wildcards) -> list[str]:
    """The files of the `compare_with` result sets: the tables are redone when one changes."""
    return [f for _, path in COMPARE_WITH for f in compare_with_inputs(path)]


def report_record(wildcards) -> str:
    """The run record whose environment the report shows: the first MosaicNet training."""
    return f"{mosaicnet_dirs()[0]}/{RECORD}"


def largest_grid_mask(wildcards) -> str:
    """The mask.png of the largest grid's whole-mosaic classification (first seed): a paired
    run classifies only what its time budget allows."""
    run_dir = CLASSIFY_FULL_DIR.format(grid=GRIDS[-1], seed=CLASSIFY["seeds"][0])
    return f"{run_dir}/mask.png"


def final_outputs(wildcards) -> list[str]:
    """The report and every job's files: a deleted intermediate is rebuilt, with what needs it."""
    blocks = planned_blocks()
    block_dirs = [b for n in blocks for b in tinycnn_block_dirs(n)]
    classify_dirs = [b for n in blocks for b in classify_block_dirs(n)]
    return [
        REPORT_HTML,
        *(f"{TABLES}/{name}.csv" for name in TABLE_NAMES),
        *figure_files("png"),
        *figure_files("svg"),
        f"{FIGURE_DIR}/mask.png",
        *files([*block_dirs, *tinycnn_full_dirs()], TINYCNN_FILES),
        *files([*classify_dirs, *classify_full_dirs()], CLASSIFY_FILES),
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
    text = f"{registry.FIGURES[figure_id].caption}\n"
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


def rank_tasks(wildcards) -> int:
    """Tasks a cluster job asks for (the SLURM plugin's `tasks`): one per rank."""
    return int(wildcards.ranks)


def rank_nodes(wildcards) -> int | None:
    """Nodes a ranked job spreads its tasks over (sbatch --nodes), when the config's `nodes`
    asks for more than one; None (no such resource) otherwise."""
    if int(wildcards.ranks) > 1 and config["nodes"] > 1:
        return config["nodes"]
    return None


def run_script(kind: str, full: bool = False):
    """The command of a job of one run (a GPU run, a full-length run, a whole-mosaic
    classification), one shell line."""
    log = RUN_LOGS[kind, full]

    def of(wildcards, resources) -> str:
        values = dict(wildcards.items())
        block = None if full else int(values["block"])
        if kind == "classify" and full:  # its wildcards name the grid and seed only
            values = classify_full_config(values["grid"], values["seed"])
        run = plan.Run(kind, (values,))
        launcher = resources.get("mpi")
        if kind == "train":
            run_dir = TINYCNN_DIR.format(**values)
            out = f"{run_dir}/full" if full else f"{run_dir}/block~{block}"
            argv = plan.train_argv(run, out, config, block=block, launcher=launcher)
        elif full:
            out = CLASSIFY_FULL_DIR.format(**values)
            weights = f"{MOSAICNET_DIR.format(seed=values['seed'])}/model.pt"
            argv = plan.classify_argv(run, out, weights, config, block=None)
        else:
            out = f"{CLASSIFY_DIR.format(**values)}/block~{block}"
            weights = f"{MOSAICNET_DIR.format(seed=values['seed'])}/model.pt"
            argv = plan.classify_argv(
                run, out, weights, config, block=block, launcher=launcher
            )
        return logged([argv], log.format(**values))

    return of
