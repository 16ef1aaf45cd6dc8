# Shared helpers: config validation with one-line errors, engine availability, the sweep grid.
# No rules live here (snakemake --lint wants functions and rules in separate files).

import os
from itertools import product
from pathlib import Path

import jsonschema
import yaml
from snakemake.exceptions import WorkflowError
from snakemake.logging import logger
from snakemake.utils import validate

SCHEMA = "../schemas/config.schema.yaml"

# Engines and modes whose parallelism is not a CPU thread count: they run once, at 1.
SINGLE_THREADED_ENGINES = ("numpy", "cuda", "torch-cuda")
SINGLE_WORKER_MODES = ("sequential", "cuda")


# --- config validation -------------------------------------------------------------------


def _key_path(error: jsonschema.ValidationError) -> str:
    """'train.tinycnn.engines[2]' for the config location an error points at."""
    key = ""
    for part in error.absolute_path:
        key += (
            f"[{part}]" if isinstance(part, int) else (f".{part}" if key else str(part))
        )
    return key or "<top level>"


def _description(error: jsonschema.ValidationError) -> str | None:
    """The nearest schema description (the error's own node or an enclosing oneOf)."""
    while error is not None:
        if "description" in error.schema:
            return error.schema["description"]
        error = error.parent
    return None


def config_error_message(error: jsonschema.ValidationError) -> str:
    """One line that names the key, the bad value and what is allowed."""
    key, value, schema = _key_path(error), error.instance, error.schema
    if error.validator == "additionalProperties":
        allowed = sorted(schema.get("properties", {}))
        unknown = sorted(set(value) - set(allowed))
        where = "" if key == "<top level>" else f" in '{key}'"
        return (
            f"unknown config key {', '.join(repr(k) for k in unknown)}{where}; "
            f"allowed keys: {', '.join(allowed)}"
        )
    if error.validator == "enum":
        return (
            f"config key '{key}': {value!r} is not allowed; "
            f"allowed values: {', '.join(str(v) for v in error.validator_value)}"
        )
    if error.validator in ("minimum", "exclusiveMinimum"):
        op = ">=" if error.validator == "minimum" else ">"
        return f"config key '{key}': {value!r} is too small; it must be {op} {error.validator_value}"
    if error.validator in ("pattern", "oneOf", "anyOf"):
        hint = _description(error) or f"it must match {error.validator_value!r}"
        return f"config key '{key}': {value!r} is invalid; {hint}"
    if error.validator == "type":
        hint = (
            " (with --config write True or False)"
            if error.validator_value == "boolean"
            else ""
        )
        return f"config key '{key}': {value!r} must be of type {error.validator_value}{hint}"
    if error.validator == "minItems":
        return f"config key '{key}' must list at least {error.validator_value} value(s)"
    if error.validator == "uniqueItems":
        return f"config key '{key}' lists a value twice: {value!r}"
    return f"config key '{key}': {error.message}"


def validate_config(config: dict) -> None:
    """Validate against the schema (filling defaults); re-raise errors as one clear line."""
    try:
        validate(config, SCHEMA)
    except WorkflowError as err:
        cause = err.__context__  # snakemake raises from inside `except ValidationError`
        if not isinstance(cause, jsonschema.ValidationError):
            raise
        raise WorkflowError(f"invalid config: {config_error_message(cause)}") from None
    if config["data"]["source"] == "dir" and not config["data"]["dir"]:
        raise WorkflowError(
            "invalid config: config key 'data.dir' must name a directory when data.source is 'dir'"
        )


validate_config(config)

RESULTS = config["results"]
TINYCNN = config["train"]["tinycnn"]
MOSAICNET = config["train"]["mosaicnet"]
CLASSIFY = config["classify"]


# --- what this machine can run -------------------------------------------------------------


def _torch_cuda_reason() -> str | None:
    import torch  # imported only when the config asks for a GPU mode: it costs a second

    return (
        None if torch.cuda.is_available() else "needs a CUDA GPU; none visible to torch"
    )


def unavailable_reason(engine: str) -> str | None:
    """None if a tinycnn/mosaicnet engine or classify mode can run here, else why not.

    Asked once at DAG build, only for the GPU ones, so a CPU-only config never imports torch.
    """
    if engine in ("cuda", "torch-cuda"):
        from cnnpar.nets.tinycnn import unavailable_reason as engine_reason

        return engine_reason(engine)
    if engine == "mode-cuda":
        return _torch_cuda_reason()
    return None


def usable(values: list[str], what: str, check_as=lambda v: v) -> list[str]:
    """Drop unavailable engines/modes with a warning, or fail when config strict is true."""
    keep = []
    for value in values:
        reason = unavailable_reason(check_as(value))
        if reason is None:
            keep.append(value)
        elif config["strict"]:
            raise WorkflowError(
                f"{what} {value!r} is not available on this machine: {reason} "
                f"(strict: true; remove it from the config or set strict: false to skip it)"
            )
        else:
            logger.warning(
                f"cnnpar: skipping {what} {value!r}: {reason}; set strict: true to fail instead"
            )
    return keep


TRAIN_ENGINES = usable(TINYCNN["engines"], "train engine")
CLASSIFY_MODES = usable(
    CLASSIFY["modes"],
    "classify mode",
    check_as=lambda mode: "mode-cuda" if mode == "cuda" else mode,
)
if not TRAIN_ENGINES or not CLASSIFY_MODES:
    raise WorkflowError(
        "nothing to run: every configured train engine or classify mode is unavailable here; "
        "add one this machine can run (numpy, numba, torch; sequential, threads, processes)"
    )
if not usable([MOSAICNET["engine"]], "mosaicnet engine"):
    raise WorkflowError(
        f"mosaicnet engine {MOSAICNET['engine']!r} is not available; the classify jobs need "
        "MosaicNet weights: set train.mosaicnet.engine to torch"
    )


# --- the sweep grid ---------------------------------------------------------------------


def grid_name(grid: str | dict) -> str:
    """'200x300' for either spelling of a grid in the config."""
    if isinstance(grid, dict):
        return f"{grid['rows']}x{grid['cols']}"
    return grid


def grid_shape(name: str) -> tuple[int, int]:
    rows, cols = name.split("x")
    return int(rows), int(cols)


GRIDS = list(dict.fromkeys(grid_name(g) for g in CLASSIFY["grids"]))

# Parameters are named in the path (key~value), so a result is self-describing and the
# tables can recover every parameter from where a file lives.
TINYCNN_DIR = f"{RESULTS}/train/tinycnn/engine~{{engine}}/threads~{{threads}}/filters~{{filters}}/batch~{{batch}}/seed~{{seed}}"
MOSAICNET_DIR = f"{RESULTS}/train/mosaicnet/seed~{{seed}}"
CLASSIFY_DIR = f"{RESULTS}/classify/mode~{{mode}}/workers~{{workers}}/grid~{{grid}}/batch~{{batch}}/seed~{{seed}}"
ENV_INFO = f"{RESULTS}/env/threads~{{threads}}/info.json"
DATA_CHECK = f"{RESULTS}/data/verify.txt"
TABLES = f"{RESULTS}/tables"
FIGURES = f"{RESULTS}/figures"
LOGS = f"{RESULTS}/logs"
BENCHMARKS = f"{RESULTS}/benchmarks"
REPORT_HTML = f"{RESULTS}/report.html"

# Figures drawn from the tables: stem -> whether an SVG copy is written next to the PNG.
FIGURE_STEMS = (
    "train_speedup",
    "train_throughput",
    "time_to_accuracy",
    "classify_speedup",
    "classify_cost_per_cell",
    "roofline",
)


def tinycnn_jobs() -> list[dict]:
    """One dict of wildcards per tinycnn training job."""
    jobs = []
    for engine in TRAIN_ENGINES:
        threads = [1] if engine in SINGLE_THREADED_ENGINES else TINYCNN["threads"]
        for t, f, b, s in product(
            threads, TINYCNN["filters"], TINYCNN["batch_sizes"], TINYCNN["seeds"]
        ):
            jobs.append(dict(engine=engine, threads=t, filters=f, batch=b, seed=s))
    return jobs


def classify_jobs() -> list[dict]:
    """One dict of wildcards per classify job; the largest grids come last."""
    jobs = []
    for grid in sorted(GRIDS, key=lambda g: (grid_shape(g)[0] * grid_shape(g)[1], g)):
        for mode in CLASSIFY_MODES:
            workers = [1] if mode in SINGLE_WORKER_MODES else CLASSIFY["workers"]
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


def env_infos() -> list[str]:
    return [ENV_INFO.format(threads=t) for t in env_thread_counts()]


def largest_grid_mask() -> str:
    """The mask.png of the largest grid (its first mode, fewest workers, first seed)."""
    jobs = classify_jobs()
    largest = jobs[-1]["grid"]
    first = next(job for job in jobs if job["grid"] == largest)
    return f"{CLASSIFY_DIR.format(**first)}/mask.png"


def figure_files(ext: str) -> list[str]:
    return [f"{FIGURES}/{stem}.{ext}" for stem in FIGURE_STEMS]


def data_args() -> str:
    """The data-source flags every cnnpar command gets (empty for the bundled copy)."""
    source = config["data"]["source"]
    if source == "dir":
        return f"--data-source {config['data']['dir']}"
    if source == "download":
        return "--data-source download"
    return ""


def data_verify_args() -> str:
    source = config["data"]["source"]
    return f"--dir {config['data']['dir']}" if source == "dir" else f"--source {source}"


def final_outputs() -> list[str]:
    return [
        REPORT_HTML,
        f"{TABLES}/train.csv",
        f"{TABLES}/classify.csv",
        f"{TABLES}/summary.csv",
        *figure_files("png"),
        *figure_files("svg"),
        f"{FIGURES}/mask.png",
    ]


def config_yaml() -> str:
    """The validated config (defaults filled in), as it is recorded in the report."""
    return yaml.safe_dump(dict(config), sort_keys=False, default_flow_style=None)
