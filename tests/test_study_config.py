"""cnnpar.study.config: the workflow config's validation messages and the engine/mode
availability checks, called directly (no Snakemake)."""

from __future__ import annotations

import copy

import pytest
import yaml
from workflow_helpers import REPO

from cnnpar import registry
from cnnpar.errors import CnnparError
from cnnpar.study import config as study_config
from cnnpar.study.config import (
    ConfigError,
    check_thread_cap,
    load_schema,
    resolve_paths,
    usable,
    validate_config,
)

SCHEMA = REPO / "workflow/schemas/config.schema.yaml"
DEFAULT = yaml.safe_load((REPO / "config/config.yaml").read_text())


def check(override: dict) -> str:
    """The one-line message for the default config with `override` merged in."""

    def merge(base: dict, new: dict) -> dict:
        for key, value in new.items():
            base[key] = merge(base.get(key, {}), value) if isinstance(value, dict) else value
        return base

    with pytest.raises(ConfigError) as err:
        validate_config(merge(copy.deepcopy(DEFAULT), override), SCHEMA)
    message = str(err.value)
    assert message.startswith("invalid config: ") and "\n" not in message
    return message


def test_the_shipped_configs_are_valid():
    for name in ("config/config.yaml", "config/full.yaml", "tests/data/config.tiny.yaml"):
        validate_config(yaml.safe_load((REPO / name).read_text()), SCHEMA)


def test_defaults_are_filled_in_like_snakemake_validate():
    config: dict = {"train": {"tinycnn": {"engines": ["numba"]}}}
    validate_config(config, SCHEMA)
    assert config["results"] == "results" and config["strict"] is False
    assert config["data"] == {"source": "bundled", "dir": None, "mirror": None}
    assert config["train"]["tinycnn"]["engines"] == ["numba"]  # kept
    assert config["train"]["tinycnn"]["threads"] == "auto"  # filled next to it
    assert config["train"]["mosaicnet"]["engine"] == "torch"  # a defaulted {} filled in turn
    assert config["classify"]["grids"] == ["200x300"]
    # Each config gets its own copies: filling one never changes the schema or another.
    config["classify"]["grids"].append("1x1")
    other: dict = {}
    validate_config(other, SCHEMA)
    assert other["classify"]["grids"] == ["200x300"]


def test_error_is_a_cnnpar_error():
    assert issubclass(ConfigError, CnnparError)


def test_bad_enum_names_the_key_and_the_allowed_values():
    message = check({"train": {"tinycnn": {"engines": ["numpy", "tpu"]}}})
    assert "'train.tinycnn.engines[1]': 'tpu' is not allowed" in message
    assert f"allowed values: {', '.join(registry.engines_for('tinycnn'))}" in message


def test_unknown_key_lists_the_allowed_keys():
    message = check({"classify": {"grid": ["10x10"]}})
    assert "unknown config key 'grid' in 'classify'" in message
    keys = sorted(load_schema(SCHEMA)["properties"]["classify"]["properties"])
    assert f"allowed keys: {', '.join(keys)}" in message and "grids" in keys
    assert "unknown config key 'typo'; allowed keys:" in check({"typo": 1})


def test_too_small():
    message = check({"train": {"tinycnn": {"threads": [0, 2]}}})
    assert "'train.tinycnn.threads[0]': 0 is too small; it must be >= 1" in message
    assert "must be > 0" in check({"train": {"tinycnn": {"lr": 0}}})


def test_bad_grid_explains_both_spellings():
    message = check({"classify": {"grids": ["0x5"]}})
    assert "'classify.grids[0]': '0x5' is invalid; a grid is 'ROWSxCOLS'" in message
    assert "{rows: R, cols: C}" in message
    validate_config({"classify": {"grids": [{"rows": 2, "cols": 3}, "4x5"]}}, SCHEMA)


def test_boolean_type_hints_at_the_command_line_spelling():
    message = check({"strict": "true"})
    assert "'strict': 'true' must be of type boolean (with --config write True or False)" in (
        message
    )


def test_source_dir_needs_a_directory():
    message = check({"data": {"source": "dir", "dir": None}})
    assert message == (
        "invalid config: config key 'data.dir' must name a directory when data.source is 'dir'"
    )
    config = copy.deepcopy(DEFAULT)
    config["data"] = {"source": "dir", "dir": "/some/mnist"}
    validate_config(config, SCHEMA)


def test_empty_list_and_duplicates():
    assert "'classify.modes' must list at least 1 value(s)" in check({"classify": {"modes": []}})
    assert "lists a value twice" in check({"classify": {"workers": [2, 2]}})


# --- paths, resolved against the directory Snakemake runs in ---------------------------------


def resolved(tmp_path, **override: object) -> dict:
    config: dict = {"data": {}, "timing": {}, **override}
    validate_config(config, SCHEMA)
    resolve_paths(config, tmp_path)
    return config


def test_relative_paths_become_absolute_against_the_workdir(tmp_path, monkeypatch):
    """Jobs run in shadow directories: a relative data.dir or timing.lock named nothing there
    (the data check failed; every job locked a lock file of its own)."""
    (tmp_path / "mnist_raw").mkdir()
    (tmp_path / "locks").mkdir()
    monkeypatch.chdir("/")  # the workdir is the argument, not the caller's directory
    config = resolved(
        tmp_path,
        data={"source": "dir", "dir": "mnist_raw/"},
        timing={"lock": "locks/../locks/timing.lock"},
    )
    assert config["data"]["dir"] == str(tmp_path / "mnist_raw")
    assert config["timing"]["lock"] == str(tmp_path / "locks/timing.lock")
    assert config["results"] == "results"  # outputs: Snakemake places them by relative path


def test_home_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home/mnist").mkdir(parents=True)
    config = resolved(tmp_path, data={"source": "dir", "dir": "~/mnist"}, results="~/out")
    assert config["data"]["dir"] == str(tmp_path / "home/mnist")
    assert config["results"] == "home/out"  # inside the workdir: relative


def test_results_outside_the_workdir_become_absolute(tmp_path):
    """A shadow rule refuses an output path that climbs out of the workdir with '..'."""
    work = tmp_path / "work"
    work.mkdir()
    config: dict = {"results": "../elsewhere/results"}
    validate_config(config, SCHEMA)
    resolve_paths(config, work)
    assert config["results"] == str(tmp_path / "elsewhere/results")
    config = {"results": str(work / "sub" / "results")}  # absolute but inside: relative
    validate_config(config, SCHEMA)
    resolve_paths(config, work)
    assert config["results"] == "sub/results"


def test_missing_data_dir_and_lock_directory_are_named_at_start_up(tmp_path):
    with pytest.raises(ConfigError) as err:
        resolved(tmp_path, data={"source": "dir", "dir": "mnist_raw"})
    assert str(err.value) == (
        f"invalid config: config key 'data.dir': '{tmp_path}/mnist_raw' is not a directory "
        f"(a relative path is taken from '{tmp_path}', where snakemake runs); name the "
        "directory that holds the four MNIST IDX files"
    )
    with pytest.raises(ConfigError, match=r"^invalid config: config key 'timing.lock': the dir"):
        resolved(tmp_path, timing={"lock": "no/such/dir/timing.lock"})
    # data.dir is only checked when it is the source
    assert resolved(tmp_path, data={"dir": "mnist_raw"})["data"]["source"] == "bundled"


# --- the thread cap ----------------------------------------------------------------------

ASKED = {"train.tinycnn.threads": 2, "classify.workers": 2, "train.mosaicnet.threads": 1}


def test_a_sweep_above_cores_is_refused_naming_the_keys_and_the_fix():
    with pytest.raises(ConfigError) as err:
        check_thread_cap(ASKED, cores=1)
    assert str(err.value) == (
        "cannot run this sweep: train.tinycnn.threads and classify.workers ask for 2 threads "
        "per job but --cores 1 caps every job at 1, so Snakemake would silently run them as "
        "1-thread jobs; run with --cores 2 or more, or lower those counts to 1"
    )
    with pytest.raises(ConfigError, match=r"^cannot run this sweep: classify.workers asks for 8 "):
        check_thread_cap({"classify.workers": 8, "train.tinycnn.threads": 4}, cores=4)


def test_max_threads_is_a_cap_as_well():
    with pytest.raises(ConfigError, match=r"but --max-threads 1 caps .*; run with --max-threads 2"):
        check_thread_cap(ASKED, cores=8, max_threads=1)


def test_set_threads_on_a_timed_rule_is_refused():
    with pytest.raises(ConfigError) as err:
        check_thread_cap(ASKED, cores=2, set_threads=["classify=1"])
    assert str(err.value).startswith(
        "cannot run this sweep: --set-threads classify=1 replaces the thread counts the config "
        "gives timed jobs"
    )


def test_runs_within_the_cap_or_without_one_are_left_alone():
    check_thread_cap(ASKED, cores=2)
    check_thread_cap(ASKED, cores=2, max_threads=4)
    # A cluster executor without --cores: each job's cores come from the profile.
    check_thread_cap(ASKED, cores=None, max_threads=None)


# --- availability -----------------------------------------------------------------------


@pytest.fixture
def no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """A machine where every CUDA engine and mode is unavailable, whatever this one has."""

    def reason(name: str, kind: str) -> str | None:
        gpu = {"cuda", "torch-cuda"}
        return "needs a CUDA GPU; none found" if name in gpu else None

    monkeypatch.setattr(study_config, "unavailable_reason", reason)


def test_cpu_engines_and_modes_are_always_available():
    for engine in ("numpy", "numba", "torch"):
        assert study_config.unavailable_reason(engine, "train engine") is None
    for mode in ("sequential", "threads", "processes"):
        assert study_config.unavailable_reason(mode, "classify mode") is None


def test_unavailable_values_are_skipped_with_a_warning(no_gpu: None):
    warnings: list[str] = []
    kept = usable(["numpy", "torch-cuda", "numba"], "train engine", False, warnings.append)
    assert kept == ["numpy", "numba"]
    assert warnings == [
        "cnnpar: skipping train engine 'torch-cuda': needs a CUDA GPU; none found; "
        "set strict: true to fail instead"
    ]


def test_strict_fails_naming_the_value(no_gpu: None):
    with pytest.raises(ConfigError, match=r"classify mode 'cuda' is not available on this machine"):
        usable(["sequential", "cuda"], "classify mode", True, pytest.fail)


def test_without_probing_the_config_is_trusted(no_gpu: None):
    """A cluster run: the submitting node's hardware says nothing about the compute nodes."""
    values = ["numpy", "cuda", "torch-cuda"]
    assert usable(values, "train engine", True, pytest.fail, probe=False) == values


@pytest.mark.parametrize(
    ("cores", "ranks", "parallel", "ranked", "expected"),
    [
        ([1, 2], [2], True, True, [(2, 1)]),  # the default study: 2 ranks x 1 thread
        ([1, 2, 4, 8], [2, 4], True, True, [(2, 1), (2, 2), (4, 1), (2, 4), (4, 2)]),
        ([2], [3], True, True, []),  # no rank count divides the cores
        ([1, 2], [2], True, False, [(1, 1), (1, 2)]),  # threads or processes
        ([1, 2], [2], False, False, [(1, 1)]),  # serial
    ],
)
def test_layouts_split_each_core_count_over_ranks(cores, ranks, parallel, ranked, expected):
    assert study_config.layouts(cores, ranks, parallel=parallel, ranked=ranked) == expected


def test_data_mirror_is_a_url_or_a_list_of_urls_for_source_download():
    for mirror in ("https://mirror.example.org/mnist/", ["http://a.example/m", "file:///srv/m/"]):
        config = copy.deepcopy(DEFAULT)
        config["data"] = {"source": "download", "mirror": mirror}
        validate_config(config, SCHEMA)
        assert study_config.mirrors(config) == ([mirror] if isinstance(mirror, str) else mirror)
    assert study_config.mirrors(DEFAULT | {"data": {"mirror": None}}) == []
    message = check({"data": {"source": "download", "mirror": "mirror.example.org/mnist"}})
    assert message == (
        "invalid config: config key 'data.mirror': 'mirror.example.org/mnist' is invalid; a "
        "mirror is the URL of a directory serving the MNIST .gz files (http, https, ftp or "
        "file), e.g. 'https://mirror.example.org/mnist/', or a list of such URLs"
    )
    assert "'data.mirror' must list at least 1" in check(
        {"data": {"source": "download", "mirror": []}}
    )
    # A mirror the source would ignore is refused, not silently dropped.
    assert check({"data": {"mirror": "https://mirror.example.org/mnist/"}}) == (
        "invalid config: config key 'data.mirror' is used only when data.source is 'download' "
        "(got 'bundled'); set data.source: download or remove data.mirror"
    )
