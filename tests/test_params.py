"""One declaration per run parameter (cnnpar.params): the CLI, the config schema, the config docs
and the study's command lines all follow it."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import yaml
from test_declarations import SCHEMA, at, documented
from workflow_helpers import REPO

from cnnpar import cli, data, params, registry
from cnnpar.errors import CnnparError
from cnnpar.study import plan
from cnnpar.study.config import ConfigError, load_schema, validate_config

DECLARED = [(section, param) for section, declared in params.SECTIONS.items() for param in declared]
IDS = [f"{section}.{param.name}" for section, param in DECLARED]
COMMAND = {"train.tinycnn": "train", "classify": "classify"}
# What each command needs besides its run parameters to parse.
REQUIRED = {
    "train": ["--out", "o"],
    "classify": ["--weights", "w.pt", "--rows", "2", "--cols", "2", "--out", "o"],
}


def sample(param: params.Param) -> Any:
    """A valid value other than the default, of the declared type."""
    if param.type is bool:
        return not param.default
    low = param.minimum if param.minimum is not None else param.exclusive_minimum or 0
    # +6 passes every declared default, a study's included (epochs 2, repeats 3).
    return param.type(low + 6 if param.type is int else low + 0.5)


def option(command: str, name: str) -> Any:
    """The argparse action of `cnnpar COMMAND` whose dest is `name`."""
    sub = next(a for a in cli.build_parser()._actions if a.dest == "command").choices[command]
    return next(a for a in sub._actions if a.dest == name)


def parse(command: str, *argv: str) -> Any:
    return cli.build_parser().parse_args([command, *REQUIRED[command], *argv])


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return load_schema(SCHEMA)


# --- the CLI ------------------------------------------------------------------------------


@pytest.mark.parametrize(("section", "param"), DECLARED, ids=IDS)
def test_the_cli_has_the_option_with_its_default_and_type(section, param) -> None:
    command = COMMAND[section]
    action = option(command, param.name)
    assert action.option_strings == [param.flag]
    assert action.default == param.default
    assert getattr(parse(command), param.name) == param.default
    value = sample(param)
    parsed = getattr(parse(command, param.flag, param.text(value)), param.name)
    assert type(parsed) is param.type and parsed == value


@pytest.mark.parametrize(("section", "param"), DECLARED, ids=IDS)
def test_the_cli_refuses_a_value_out_of_the_declared_bounds(section, param) -> None:
    bad = [
        *([param.minimum - 1] if param.minimum is not None else []),
        *([param.exclusive_minimum] if param.exclusive_minimum is not None else []),
        *([param.maximum + 1] if param.maximum is not None else []),
        "x",
    ]
    for value in bad:
        with pytest.raises(cli.UsageError, match=f"^{param.flag} "):
            parse(COMMAND[section], param.flag, str(value))


def test_model_specific_defaults_are_declared_as_such() -> None:
    by_model = {p.name for p in params.TRAIN if p.model_default}
    for model in registry.MODELS.values():
        assert set(model.defaults) == by_model, model.name
    for param in params.TRAIN:
        if param.model_default:
            assert param.default is None, param.name  # TrainConfig.resolved fills it in


class Captured(CnnparError):
    """Raised by the fake run with the config it was given."""


@pytest.mark.parametrize("command", ["train", "classify"])
def test_the_command_passes_every_parameter_to_its_config_by_name(command, monkeypatch) -> None:
    if command == "train":
        import cnnpar.train as module

        declared, config_class = params.TRAIN, module.TrainConfig
    else:
        import cnnpar.classify as module

        declared, config_class = params.CLASSIFY, module.ClassifyConfig

    captured: list = []

    def fake_run(cfg: Any, **_: Any) -> None:
        captured.append(cfg)
        raise Captured("stopped before any work")

    monkeypatch.setattr(module, "run", fake_run)
    argv = [a for p in declared for a in p.argv(sample(p))]
    assert cli.main([command, *REQUIRED[command], *argv]) == cli.EXIT_USAGE
    (cfg,) = captured
    fields = {f.name: f for f in dataclasses.fields(config_class)}
    for param in declared:
        assert getattr(cfg, param.name) == sample(param), param.name
        # The config's own default is the command's, so a caller of the API gets what a
        # command line without the option gets.
        assert fields[param.name].default == param.default, param.name


def test_the_declared_sizes_are_the_data_s() -> None:
    sizes = {p.name: p.maximum for p in params.TRAIN}
    assert sizes["train_size"] == data.COUNTS["train"] and sizes["test_size"] == data.COUNTS["test"]


# --- the config schema and its docs --------------------------------------------------------


@pytest.mark.parametrize(("section", "param"), DECLARED, ids=IDS)
def test_the_schema_has_the_key_with_its_default_and_bounds(schema, section, param) -> None:
    node = at(schema, f"{section}.{param.key}")
    assert node["default"] == param.study_default
    if param.sweep:
        assert node["type"] == "array" and isinstance(node["default"], list)
        node = node["items"]
    json_type = {int: "integer", float: "number", bool: "boolean"}[param.type]
    assert node["type"] == ([json_type, "null"] if param.nullable else json_type)
    cap = param.maximum if param.config_maximum is None else param.config_maximum
    declared = {
        "minimum": param.minimum,
        "exclusiveMinimum": param.exclusive_minimum,
        "maximum": cap,
    }
    assert {k: node.get(k) for k in declared} == declared


@pytest.mark.parametrize(("section", "param"), DECLARED, ids=IDS)
def test_the_config_refuses_a_value_out_of_the_declared_bounds(section, param) -> None:
    *parents, last = f"{section}.{param.key}".split(".")
    if param.type is bool:
        bad: Any = "yes"
    elif param.minimum is not None:
        bad = param.minimum - 1
    else:
        bad = param.exclusive_minimum
    config: dict[str, Any] = {}
    node = config
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = [bad] if param.sweep else bad
    with pytest.raises(ConfigError, match=f"'{section}.{param.key}"):
        validate_config(config, SCHEMA)


NULLABLE = [(section, param) for section, param in DECLARED if param.nullable]


@pytest.mark.parametrize(("section", "param"), NULLABLE, ids=[f"{s}.{p.name}" for s, p in NULLABLE])
def test_a_nullable_key_may_be_null_and_its_command_then_goes_without(section, param) -> None:
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    node = config
    for part in section.split("."):
        node = node[part]
    node[param.key] = None
    validate_config(config, SCHEMA)
    assert node[param.key] is None
    assert plan.param_options([param], node, {}) == []


@pytest.mark.parametrize(("section", "param"), DECLARED, ids=IDS)
def test_the_config_docs_document_the_key_with_its_default(section, param) -> None:
    default, meaning = documented()[f"{section}.{param.key}"]
    assert yaml.safe_load(default) == param.study_default
    assert meaning


@pytest.mark.parametrize(
    "placeholder", [None, {"type": "integer", "default": 2}], ids=["missing", "hand-written"]
)
def test_a_schema_without_a_parameter_s_placeholder_is_refused(tmp_path, placeholder) -> None:
    raw = yaml.safe_load(SCHEMA.read_text())
    keys = raw["properties"]["train"]["properties"]["tinycnn"]["properties"]
    if placeholder is None:
        del keys["epochs"]
    else:
        keys["epochs"] = placeholder
    path = tmp_path / "schema.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"train.tinycnn.epochs must be a placeholder"):
        load_schema(path)


# --- the study's command lines -------------------------------------------------------------


def test_the_sweep_axes_are_the_family_wildcards() -> None:
    assert tuple(p.axis for p in params.TRAIN if p.sweep) == plan.TRAIN_FAMILY
    axes = tuple(p.axis for p in params.CLASSIFY if p.sweep)
    assert axes == tuple(k for k in plan.CLASSIFY_FAMILY if k != "grid")


def study_config() -> dict[str, Any]:
    """The default config with every run parameter set to a value other than its default."""
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    validate_config(config, SCHEMA)
    for section, param in DECLARED:
        node = config
        for part in section.split("."):
            node = node[part]
        node[param.key] = [sample(param)] if param.sweep else sample(param)
    return config


def flag_value(argv: list[str], flag: str) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv else None


def test_the_train_command_carries_every_parameter_from_the_config() -> None:
    config = study_config()
    tinycnn = config["train"]["tinycnn"]
    (first,) = plan.tinycnn_configs(["numpy"], tinycnn)
    run = plan.Run("train", (first,))
    full = plan.train_argv(run, "out", config, block=None)
    paired = plan.train_argv(run, "out", config, block=1)
    assert full[:9] == ["cnnpar", "train", "--model", "tinycnn", "--engine", "numpy",
                        "--ranks", "1", "--threads"]  # fmt: skip
    for param in params.TRAIN:
        value = tinycnn[param.key][0] if param.sweep else tinycnn[param.key]
        if param.name == "time_budget":  # a paired throughput run's only
            assert flag_value(full, param.flag) is None
            assert flag_value(paired, param.flag) == param.text(value)
        elif param.name == "epochs":  # a throughput run's epochs only bound its budget
            assert flag_value(full, param.flag) == param.text(value)
            assert flag_value(paired, param.flag) == str(plan.throughput_epochs(tinycnn))
        else:
            assert flag_value(full, param.flag) == flag_value(paired, param.flag)
            assert flag_value(full, param.flag) == param.text(value), param.name
    # What the workflow runs, the command line parses into the same values.
    args = cli.build_parser().parse_args(full[1:])
    for param in params.TRAIN:
        if param.name != "time_budget":
            expected = tinycnn[param.key][0] if param.sweep else tinycnn[param.key]
            assert getattr(args, param.name) == expected, param.name


def test_the_classify_command_carries_every_parameter_from_the_config() -> None:
    config = study_config()
    section = config["classify"]
    (first,) = plan.classify_configs(["sequential"], ["3x4"], section)
    argv = plan.classify_argv(plan.Run("classify", (first,)), "out", "w.pt", config, block=1)
    args = cli.build_parser().parse_args(argv[1:])
    for param in params.CLASSIFY:
        value = section[param.key][0] if param.sweep else section[param.key]
        assert flag_value(argv, param.flag) == param.text(value), param.name
        assert getattr(args, param.name) == value, param.name
