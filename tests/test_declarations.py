"""One declaration per concept: the config schema, its user docs and the CLI name the engines and
modes of cnnpar.registry, and nothing else lists them by hand."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from workflow_helpers import REPO

from cnnpar import cli, registry
from cnnpar.study.config import REGISTRY_ENUMS, ConfigError, load_schema

SCHEMA = REPO / "workflow/schemas/config.schema.yaml"
CONFIG_DOCS = REPO / "config/README.md"
# A documented key: | `dotted.key` | `default, as YAML` | meaning |
DOC_ROW = re.compile(r"^\| `([^`]+)` \| `([^`]*)` \| (.*) \|$")


def resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """`node` with a local `$ref` ("#/$defs/NAME") replaced by what it names."""
    ref = node.get("$ref")
    if ref is None:
        return node
    target: Any = schema
    for part in ref.removeprefix("#/").split("/"):
        target = target[part]
    return target


def at(schema: dict[str, Any], key: str) -> dict[str, Any]:
    """The schema of config key `key` ("train.tinycnn.engines")."""
    node = schema
    for part in key.split("."):
        node = node["properties"][part]
    return node


def leaves(node: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """(dotted key, schema) of every config key that is not a section of other keys."""
    for name, child in node["properties"].items():
        key = f"{prefix}.{name}" if prefix else name
        if "properties" in child:
            yield from leaves(child, key)
        else:
            yield key, child


def enum_of(schema: dict[str, Any], key: str) -> list[str]:
    node = at(schema, key)
    if node.get("type") == "array":
        node = node["items"]
    return resolve(schema, node)["enum"]


def documented() -> dict[str, tuple[str, str]]:
    """config/README.md's key tables: dotted key → (default as written, meaning)."""
    rows: dict[str, tuple[str, str]] = {}
    for line in CONFIG_DOCS.read_text().splitlines():
        match = DOC_ROW.match(line)
        if match:
            key, default, meaning = match.groups()
            assert key not in rows, f"config/README.md documents {key!r} twice"
            rows[key] = (default, meaning)
    return rows


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return load_schema(SCHEMA)


# --- the schema ----------------------------------------------------------------------------

NAMED = {
    "train.tinycnn.engines": registry.engines_for("tinycnn"),
    "train.mosaicnet.engine": registry.engines_for("mosaicnet"),
    "classify.modes": list(registry.MODES),
}


@pytest.mark.parametrize("key", list(NAMED))
def test_schema_names_come_from_the_registry(schema: dict[str, Any], key: str) -> None:
    assert enum_of(schema, key) == NAMED[key]


@pytest.mark.parametrize("key", list(NAMED))
def test_schema_defaults_name_registered_entries(schema: dict[str, Any], key: str) -> None:
    default = at(schema, key)["default"]
    for name in default if isinstance(default, list) else [default]:
        assert name in NAMED[key], (key, name)


def test_the_schema_file_lists_no_engine_or_mode_by_hand() -> None:
    names = set(registry.ENGINES) | set(registry.MODES)

    def enums(node: Any) -> Iterator[list]:
        if isinstance(node, dict):
            if isinstance(node.get("enum"), list):
                yield node["enum"]
            for child in node.values():
                yield from enums(child)
        elif isinstance(node, list):
            for child in node:
                yield from enums(child)

    raw = yaml.safe_load(SCHEMA.read_text())
    for values in enums(raw):
        assert not names & set(values), f"a hand list in the schema: {values}"
    assert set(REGISTRY_ENUMS) <= set(raw["$defs"])


@pytest.mark.parametrize(
    "placeholder",
    [None, {"enum": ["numpy"]}],
    ids=["missing", "hand-written"],
)
def test_a_schema_without_its_placeholder_is_refused(tmp_path, placeholder) -> None:
    raw = yaml.safe_load(SCHEMA.read_text())
    if placeholder is None:
        del raw["$defs"]["tinycnn_engine"]
    else:
        raw["$defs"]["tinycnn_engine"] = placeholder
    path = tmp_path / "schema.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"\$defs.tinycnn_engine must be a placeholder"):
        load_schema(path)


def test_every_config_key_has_a_default(schema: dict[str, Any]) -> None:
    missing = [key for key, node in leaves(schema) if "default" not in node]
    assert not missing, f"keys without a default (the docs could not state one): {missing}"


# --- config/README.md -----------------------------------------------------------------------


def test_the_config_docs_list_every_key_with_the_schemas_default(schema: dict[str, Any]) -> None:
    docs = documented()
    keys = dict(leaves(schema))
    assert not set(docs) - set(keys), "documented, but not in the schema"
    assert not set(keys) - set(docs), "in the schema, but not documented"
    for key, node in keys.items():
        written = docs[key][0]
        assert yaml.safe_load(written) == node["default"], (
            f"config/README.md gives {key} the default `{written}`, the schema {node['default']!r}"
        )


@pytest.mark.parametrize("key", list(NAMED))
def test_the_config_docs_name_every_allowed_engine_and_mode(key: str) -> None:
    meaning = documented()[key][1]
    for name in NAMED[key]:
        assert f"`{name}`" in meaning, (key, name)


# --- the CLI ---------------------------------------------------------------------------------


def test_cli_choices_come_from_the_registry() -> None:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices
    choices = {
        (command, action.dest): list(action.choices)
        for command in ("train", "classify")
        for action in sub[command]._actions
        if action.choices
    }
    assert choices[("train", "engine")] == list(registry.ENGINES)
    assert choices[("train", "model")] == list(registry.MODELS)
    assert choices[("classify", "mode")] == list(registry.MODES)
    assert choices[("classify", "backend")] == list(registry.BACKENDS)


def test_engines_command_lists_every_engine_and_mode(capsys) -> None:
    assert cli.main(["engines"]) == 0
    lines = capsys.readouterr().out.splitlines()
    heads = [i for i, line in enumerate(lines) if not line.startswith(" ")]
    assert len(heads) == 2, lines
    engines, modes = lines[heads[0] + 1 : heads[1]], lines[heads[1] + 1 :]
    assert [line.split()[0] for line in engines] == list(registry.ENGINES)
    assert [line.split()[0] for line in modes] == list(registry.MODES)
    for name, mode in registry.MODES.items():
        status = next(line for line in modes if line.split()[0] == name)
        if mode.device == "cpu":
            assert status.split()[1] == "available", status
