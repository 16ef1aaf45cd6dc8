"""cnnpar.study.config: the workflow config's validation messages and the engine/mode
availability checks, called directly (no Snakemake)."""

from __future__ import annotations

import copy

import pytest
import yaml
from workflow_helpers import REPO

from cnnpar.errors import CnnparError
from cnnpar.study import config as study_config
from cnnpar.study.config import ConfigError, usable, validate_config

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
    assert config["data"] == {"source": "bundled", "dir": None}
    assert config["train"]["tinycnn"]["engines"] == ["numba"]  # kept
    assert config["train"]["tinycnn"]["threads"] == [1, 2]  # filled next to it
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
    assert "allowed values: numpy, numba, cuda, torch, torch-cuda" in message


def test_unknown_key_lists_the_allowed_keys():
    message = check({"classify": {"grid": ["10x10"]}})
    assert "unknown config key 'grid' in 'classify'" in message
    assert "allowed keys: batch_sizes, grids, modes, ranks, repeats, seeds, workers" in message
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
