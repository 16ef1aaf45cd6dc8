# The job graph: the validated config expanded into one job per sweep combination, output
# paths and input functions. Config checks live in cnnpar.study.config and names in
# cnnpar.registry. No rules here (snakemake --lint wants functions and rules in separate files).

import os
from functools import cache
from itertools import product
from pathlib import Path

import yaml
from snakemake.exceptions import WorkflowError
from snakemake.logging import logger

from cnnpar import registry
from cnnpar.errors import CnnparError
from cnnpar.mosaic import parse_grid
from cnnpar.study.config import usable, validate_config

try:
    validate_config(config, workflow.source_path("../schemas/config.schema.yaml"))
except CnnparError as err:
    raise WorkflowError(str(err)) from None

RESULTS = config["results"]
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


# Parameters are named in the path (key~value), so a result is self-describing.
TINYCNN_DIR = f"{RESULTS}/train/tinycnn/engine~{{engine}}/threads~{{threads}}/filters~{{filters}}/batch~{{batch}}/seed~{{seed}}"
MOSAICNET_DIR = f"{RESULTS}/train/mosaicnet/seed~{{seed}}"
CLASSIFY_DIR = f"{RESULTS}/classify/mode~{{mode}}/workers~{{workers}}/grid~{{grid}}/batch~{{batch}}/seed~{{seed}}"
ENV_INFO = f"{RESULTS}/env/threads~{{threads}}/info.json"
DATA_CHECK = f"{RESULTS}/data/verify.txt"
TABLES = f"{RESULTS}/tables"
FIGURE_DIR = f"{RESULTS}/figures"
LOGS = f"{RESULTS}/logs"
BENCHMARKS = f"{RESULTS}/benchmarks"
REPORT_HTML = f"{RESULTS}/report.html"
RECORD = (
    "run.json"  # cnnpar.record.RECORD_NAME, written by every train and classify job
)

FIGURE_IDS = [figure.id for figure in registry.table_figures()]


@cache
def tinycnn_jobs() -> list[dict]:
    """One dict of wildcards per tinycnn training job."""
    jobs = []
    for engine in sweep()[0]:
        threads = TINYCNN["threads"] if registry.ENGINES[engine].parallel else [1]
        for t, f, b, s in product(
            threads, TINYCNN["filters"], TINYCNN["batch_sizes"], TINYCNN["seeds"]
        ):
            jobs.append(dict(engine=engine, threads=t, filters=f, batch=b, seed=s))
    return jobs


@cache
def classify_jobs() -> list[dict]:
    """One dict of wildcards per classify job; the largest grids come last."""
    jobs = []
    for grid in GRIDS:
        for mode in sweep()[1]:
            workers = CLASSIFY["workers"] if registry.MODES[mode].parallel else [1]
            for w, b, s in product(workers, CLASSIFY["batch_sizes"], CLASSIFY["seeds"]):
                jobs.append(dict(mode=mode, workers=w, grid=grid, batch=b, seed=s))
    return jobs


def job_paths(pattern: str, jobs: list[dict], name: str) -> list[str]:
    return [f"{pattern.format(**job)}/{name}" for job in jobs]


def env_thread_counts() -> list[int]:
    """Every thread count a benchmark job runs at: one sgemm roofline measured for each."""
    counts = {job["threads"] for job in tinycnn_jobs()}
    counts |= {job["workers"] for job in classify_jobs()}
    return sorted(counts | {1})


def figure_files(ext: str) -> list[str]:
    return [f"{FIGURE_DIR}/{figure_id}.{ext}" for figure_id in FIGURE_IDS]


# --- input functions (called when the DAG is built, once the executor is known) -------------


def tinycnn_records(wildcards) -> list[str]:
    return job_paths(TINYCNN_DIR, tinycnn_jobs(), RECORD)


def mosaicnet_records(wildcards) -> list[str]:
    return [f"{MOSAICNET_DIR.format(seed=s)}/{RECORD}" for s in CLASSIFY["seeds"]]


def classify_records(wildcards) -> list[str]:
    return job_paths(CLASSIFY_DIR, classify_jobs(), RECORD)


def env_infos(wildcards) -> list[str]:
    return [ENV_INFO.format(threads=t) for t in env_thread_counts()]


def report_env_info(wildcards) -> str:
    """The environment record shown in the report: the one at the largest thread count."""
    return ENV_INFO.format(threads=max(env_thread_counts()))


def largest_grid_mask(wildcards) -> str:
    """The mask.png of the largest grid (its first mode, fewest workers, first seed)."""
    first = next(job for job in classify_jobs() if job["grid"] == GRIDS[-1])
    return f"{CLASSIFY_DIR.format(**first)}/mask.png"


def final_outputs(wildcards) -> list[str]:
    return [
        REPORT_HTML,
        f"{TABLES}/train.csv",
        f"{TABLES}/classify.csv",
        f"{TABLES}/summary.csv",
        *figure_files("png"),
        *figure_files("svg"),
        f"{FIGURE_DIR}/mask.png",
    ]


# --- parameters ------------------------------------------------------------------------------


def data_args() -> str:
    """The --data-source flag every cnnpar command gets."""
    source = config["data"]["source"]
    return f"--data-source {config['data']['dir'] if source == 'dir' else source}"


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
