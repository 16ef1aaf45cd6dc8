"""The workflow's config: schema validation with one-line errors, its paths resolved against the
directory Snakemake runs in, the thread counts Snakemake's --cores would silently lower, and which
configured engines and classify modes this machine can run.

The Snakefile calls these at parse time; they import neither Snakemake nor torch (torch only
when asked about a GPU mode), so they are unit-tested without starting a workflow.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import jsonschema
import yaml
from jsonschema import Draft202012Validator, validators

from cnnpar.errors import CnnparError
from cnnpar.params import SECTIONS
from cnnpar.registry import ENGINES, MODES, engines_for

Kind = Literal["train engine", "mosaicnet engine", "classify mode"]


class ConfigError(CnnparError):
    """The workflow config is invalid, or asks for something this machine cannot run."""


# --- validation --------------------------------------------------------------------------


def _set_defaults(validate_properties: Callable) -> Callable:
    """A `properties` validator that first fills in each missing property's schema default,
    as snakemake.utils.validate(set_default=True) does (so nested objects defaulted to {} get
    their own defaults filled next)."""

    def properties(validator, properties, instance, schema) -> Iterator:
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if "default" in subschema:
                    # A copy: the schema's own {} or [] must never become part of the config.
                    instance.setdefault(name, copy.deepcopy(subschema["default"]))
        yield from validate_properties(validator, properties, instance, schema)

    return properties


DefaultingValidator = validators.extend(
    Draft202012Validator,
    {"properties": _set_defaults(Draft202012Validator.VALIDATORS["properties"])},
)


def _key_path(error: jsonschema.ValidationError) -> str:
    """'train.tinycnn.engines[2]' for the config location an error points at."""
    key = ""
    for part in error.absolute_path:
        key += f"[{part}]" if isinstance(part, int) else (f".{part}" if key else str(part))
    return key or "<top level>"


def _description(error: jsonschema.ValidationError | None) -> str | None:
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
        return (
            f"config key '{key}': {value!r} is too small; it must be {op} {error.validator_value}"
        )
    if error.validator in ("maximum", "exclusiveMaximum"):
        op = "<=" if error.validator == "maximum" else "<"
        return (
            f"config key '{key}': {value!r} is too large; it must be {op} {error.validator_value}"
        )
    if error.validator in ("oneOf", "anyOf") and error.context:
        # A value of the right shape that fails inside its branch ('auto' or a list of counts):
        # name what is wrong inside it (a count too small, a duplicate), not the branches.
        inside = [e for e in error.context if e.validator not in ("const", "type", "enum")]
        if inside:
            return config_error_message(jsonschema.exceptions.best_match(inside))
    if error.validator in ("pattern", "oneOf", "anyOf"):
        hint = _description(error) or f"it must match {error.validator_value!r}"
        return f"config key '{key}': {value!r} is invalid; {hint}"
    if error.validator == "type":
        # `snakemake --config strict=true` passes the string 'true'; Python's spelling parses.
        hint = " (with --config write True or False)" if error.validator_value == "boolean" else ""
        return f"config key '{key}': {value!r} must be of type {error.validator_value}{hint}"
    if error.validator == "minItems":
        return f"config key '{key}' must list at least {error.validator_value} value(s)"
    if error.validator == "uniqueItems":
        return f"config key '{key}' lists a value twice: {value!r}"
    return f"config key '{key}': {error.message}"


# The schema's `$defs` that hold names declared in cnnpar.registry. The YAML keeps a placeholder
# for each and load_schema fills in the registry's names, so no list of them is kept by hand.
REGISTRY_ENUMS: dict[str, list[str]] = {
    "tinycnn_engine": engines_for("tinycnn"),
    "mosaicnet_engine": engines_for("mosaicnet"),
    "classify_mode": list(MODES),
}


def load_schema(schema_path: str | os.PathLike[str]) -> dict[str, Any]:
    """The config schema with the registry's engine and mode names filled into its `$defs` and
    the run parameters of cnnpar.params into their keys' placeholders (`{}`).

    Raises ConfigError when a placeholder is missing or written out by hand.
    """
    schema = yaml.safe_load(Path(schema_path).read_text())
    for section, declared in SECTIONS.items():
        properties = schema
        for part in section.split("."):
            properties = properties["properties"][part]
        properties = properties["properties"]
        for param in declared:
            if param.key is None:
                continue
            # As for the enums: a missing key would let configs drop the parameter, a written
            # one would be a second declaration, free to drift from cnnpar.params.
            if properties.get(param.key) != {}:
                raise ConfigError(
                    f"{schema_path}: {section}.{param.key} must be a placeholder {{}}; its "
                    "type, bounds, default and description come from cnnpar.params"
                )
            properties[param.key] = param.schema()
    defs = schema.get("$defs", {})
    for name, values in REGISTRY_ENUMS.items():
        # A missing placeholder would leave a `$ref` dangling; a hand-written enum would be a
        # second list of the names, free to drift from the registry.
        if not isinstance(defs.get(name), dict) or "enum" in defs[name]:
            raise ConfigError(
                f"{schema_path}: $defs.{name} must be a placeholder without `enum`; "
                "its names come from cnnpar.registry"
            )
        defs[name] = {**defs[name], "enum": list(values)}
    return schema


def _non_finite(value: Any, key: str = "") -> str | None:
    """The key of the first NaN or infinite number in `value` (YAML's .nan, .inf), if any."""
    if isinstance(value, float) and not math.isfinite(value):
        return key or "<top level>"
    if isinstance(value, dict | list):
        children = value.items() if isinstance(value, dict) else enumerate(value)
        for name, child in children:
            where = f"{key}[{name}]" if isinstance(name, int) else f"{key}.{name}" if key else name
            found = _non_finite(child, where)
            if found:
                return found
    return None


def validate_config(config: dict[str, Any], schema_path: str | os.PathLike[str]) -> None:
    """Validate `config` in place against the schema, filling in its defaults; raise
    ConfigError with one line "invalid config: ..." naming the first bad key."""
    bad = _non_finite(config)
    if bad is not None:  # before the schema: NaN passes every numeric comparison it makes
        raise ConfigError(f"invalid config: config key '{bad}' must be a finite number")
    schema = load_schema(schema_path)
    error = next(iter(DefaultingValidator(schema).iter_errors(config)), None)
    if error is not None:
        raise ConfigError(f"invalid config: {config_error_message(error)}")
    data = config["data"]
    if data["source"] == "dir" and not data["dir"]:
        raise ConfigError(
            "invalid config: config key 'data.dir' must name a directory when data.source is 'dir'"
        )
    if mirrors(config) and data["source"] != "download":
        raise ConfigError(
            "invalid config: config key 'data.mirror' is used only when data.source is "
            f"'download' (got {data['source']!r}); set data.source: download or remove data.mirror"
        )


def mirrors(config: dict[str, Any]) -> list[str]:
    """The validated config's data.mirror as a list (empty: cnnpar's public mirrors)."""
    mirror = config["data"].get("mirror")
    return [] if mirror is None else [mirror] if isinstance(mirror, str) else list(mirror)


def check_results_dir(path: str | os.PathLike[str]) -> None:
    """The results directory exists or can be made, and takes files; else one line."""
    import tempfile

    where = Path(path)
    try:
        where.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=where, prefix=".cnnpar-write-check-"):
            pass
    except OSError as err:
        reason = err.strerror or str(err)
        raise ConfigError(
            f"invalid config: config key 'results': cannot write into {str(where)!r} ({reason}); "
            "choose a writable directory"
        ) from None


# --- paths ---------------------------------------------------------------------------------


def resolve_paths(config: dict[str, Any], workdir: str | os.PathLike[str]) -> None:
    """Resolve, in place and once, every path of a validated `config` against `workdir`, the
    directory Snakemake runs in (the repository root, or `--directory`).

    Jobs run in shadow directories of their own (`shadow: minimal`), where a relative path names
    a file that is not there, or, for the timing lock, a different file for every job. So
    `data.dir` and `timing.lock` become absolute, with `~` expanded. `results` holds outputs,
    which Snakemake moves out of the shadow directory by their relative path: it stays relative
    (normalised) while it lies inside `workdir` and becomes absolute outside it, since a shadow
    rule refuses an output path that climbs out of the workdir with `..`.

    Raises ConfigError (one line) when `data.dir` is not a directory while `data.source` is
    'dir', or when the directory of `timing.lock` does not exist.
    """
    base = Path(os.path.abspath(workdir))

    def absolute(value: str) -> Path:
        return Path(os.path.normpath(base / os.path.expanduser(value)))

    results = absolute(config["results"])
    inside = results == base or base in results.parents
    config["results"] = str(results.relative_to(base)) if inside else str(results)

    data = config["data"]
    if data["dir"]:
        data["dir"] = str(absolute(data["dir"]))
        if data["source"] == "dir" and not Path(data["dir"]).is_dir():
            raise ConfigError(
                f"invalid config: config key 'data.dir': {data['dir']!r} is not a directory "
                f"(a relative path is taken from {str(base)!r}, where snakemake runs); "
                "name the directory that holds the four MNIST IDX files"
            )
    timing = config["timing"]
    if timing["lock"]:
        timing["lock"] = str(absolute(timing["lock"]))
        if not Path(timing["lock"]).parent.is_dir():
            raise ConfigError(
                f"invalid config: config key 'timing.lock': the directory of "
                f"{timing['lock']!r} does not exist (a relative path is taken from "
                f"{str(base)!r}, where snakemake runs); create it or choose another path"
            )


# --- the thread cap -----------------------------------------------------------------------


def check_thread_cap(
    asked: Mapping[str, int],
    cores: int | None,
    max_threads: int | None = None,
    set_threads: Sequence[str] = (),
) -> None:
    """Refuse a run in which Snakemake would silently run jobs on fewer threads than they ask for.

    Snakemake lowers every job's {threads} to --cores (and --max-threads) without a word: a
    2-thread job of the sweep then runs and is recorded as a 1-thread job, and collides with
    the sweep's real 1-thread job in every table. `asked` maps the config key of a thread or
    worker count to the largest count the sweep takes from it. `cores` and `max_threads` are
    the values Snakemake was given; None is no cap (a cluster executor without --cores, where
    each job's cores come from the profile). The cap is what Snakemake was told, not the CPUs
    this process may use: a run confined with taskset still runs, and records the parallelism
    that took effect. `set_threads` lists the `RULE=N` overrides (--set-threads, or a profile's
    set-threads) of the timed rules, which replace the sweep's counts just as silently.

    Raises ConfigError with one line naming the keys or flags and the fix.
    """
    if set_threads:
        raise ConfigError(
            f"cannot run this sweep: --set-threads {' '.join(set_threads)} replaces the thread "
            "counts the config gives timed jobs, so Snakemake would silently run them with "
            "other counts than their names and tables say; drop it and set "
            "train.tinycnn.threads, classify.workers or train.mosaicnet.threads instead"
        )
    caps = [(flag, n) for flag, n in (("--cores", cores), ("--max-threads", max_threads)) if n]
    if not caps:
        return
    flag, cap = min(caps, key=lambda c: c[1])
    over = [key for key, count in asked.items() if count > cap]
    if not over:
        return
    most = max(asked[key] for key in over)
    keys = ", ".join(over[:-1]) + (" and " if len(over) > 1 else "") + over[-1]
    raise ConfigError(
        f"cannot run this sweep: {keys} ask{'s' if len(over) == 1 else ''} for {most} threads "
        f"per job but {flag} {cap} caps every job at {cap}, so Snakemake would silently run "
        f"them as {cap}-thread jobs; run with {flag} {most} or more, or lower those counts "
        f"to {cap}"
    )


# --- other result sets ----------------------------------------------------------------------


def check_compare_with(
    paths: Sequence[str], results: str | os.PathLike[str], read: bool = True
) -> list[tuple[str, Path]]:
    """The config's `compare_with` result sets as (the path as given, the path resolved against
    the working directory, which is Snakemake's workdir, as for `results` and `data.dir`).
    With `read` each set is read once (its tables checked, an archive unpacked into a temporary
    directory): a set that cannot be read, or this run's own results directory, raises
    ConfigError with one line naming the key."""
    from cnnpar.study.compare import opened

    resolved = [(str(p), Path(p).expanduser().resolve()) for p in paths]
    own = Path(results).resolve()
    for i, (given, path) in enumerate(resolved):
        key = f"config key 'compare_with[{i}]'"
        if path == own:
            raise ConfigError(
                f"invalid config: {key}: {given!r} is this run's own results directory; name "
                "another run's results (or a `cnnpar pack` archive of it)"
            )
        if not read:
            continue
        try:
            with opened([path], [given]):
                pass
        except CnnparError as err:
            raise ConfigError(f"invalid config: {key}: {err}") from None
    return resolved


def compare_with_inputs(path: Path) -> list[str]:
    """The files of a result set whose change makes the tables step run again: the archive,
    or the directory's jobs and summary tables."""
    if path.is_file():
        return [str(path)]
    tables = path / "tables"
    return [str(tables / name) for name in ("jobs.csv", "summary.csv") if (tables / name).is_file()]


# --- what this machine can run -----------------------------------------------------------


def _torch_cuda_reason() -> str | None:
    # Asked only when the config names a GPU mode: cuda_device imports torch, which costs a second.
    from cnnpar.measure.environment import cuda_device

    return None if cuda_device() is not None else "needs a CUDA GPU; none visible to torch"


def unavailable_reason(name: str, kind: Kind) -> str | None:
    """None if engine or classify mode `name` can run here, else why not. CPU ones always
    can, so a CPU-only config never imports torch or numba.cuda."""
    if kind == "classify mode":
        return None if MODES[name].device == "cpu" else _torch_cuda_reason()
    if ENGINES[name].device == "cpu":
        return None
    from cnnpar.nets.tinycnn import unavailable_reason as engine_reason

    return engine_reason(name)


def usable(
    values: Sequence[str],
    kind: Kind,
    strict: bool,
    warn: Callable[[str], object],
    probe: bool = True,
) -> list[str]:
    """The values this machine can run: an unavailable one is dropped with `warn(message)`, or
    raises ConfigError when `strict`. With `probe` false every value is kept unchecked (a
    cluster run: the submitting node's hardware says nothing about the compute nodes')."""
    if not probe:
        return list(values)
    keep = []
    for value in values:
        reason = unavailable_reason(value, kind)
        if reason is None:
            keep.append(value)
        elif strict:
            raise ConfigError(
                f"{kind} {value!r} is not available on this machine: {reason} "
                f"(strict: true; remove it from the config or set strict: false to skip it)"
            )
        else:
            warn(f"cnnpar: skipping {kind} {value!r}: {reason}; set strict: true to fail instead")
    return keep


# --- how a job's cores are laid out ----------------------------------------------------------


def layouts(
    cores: Sequence[int], ranks: Sequence[int], *, parallel: bool, ranked: bool
) -> list[tuple[int, int]]:
    """(ranks, threads per rank) of every job an engine or mode runs, from the sweep's core
    counts (`train.tinycnn.threads`, `classify.workers`: a job's cores, whatever its layout) and
    its `ranks` axis.

    A ranked engine or mode (torch-ddp, ranks) splits each core count C evenly over R ranks
    (R divides C), so it is compared with the other layouts at equal cores; another parallel
    one runs 1 rank of C threads; a serial one 1 x 1. E.g. cores [1, 2], ranks [2] gives a ranked
    one [(2, 1)] only. The result may be empty (no R divides any C).
    """
    if ranked:
        return [(r, c // r) for c in cores for r in ranks if c % r == 0]
    if parallel:
        return [(1, c) for c in cores]
    return [(1, 1)]
