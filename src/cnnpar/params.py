"""Each run parameter that a study config carries, declared once: its type, default, help text,
bounds and config key.

From these declarations the CLI adds the options of `cnnpar train` and `cnnpar classify`
(cnnpar.cli), the config schema gets each key's type, bounds, default and description
(cnnpar.study.config.load_schema fills in the schema's placeholders), and the study's command
lines carry the config's values (cnnpar.study.plan). Adding a parameter is one entry here, its
field in TrainConfig or ClassifyConfig, the code that uses it and its row in config/README.md.

Like cnnpar.registry, this module imports neither torch, numba nor matplotlib.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from cnnpar.registry import MODELS

# The model whose options train.tinycnn configures: its registry defaults are the config's.
CONFIG_MODEL = "tinycnn"

_JSON_TYPES = {int: "integer", float: "number", bool: "boolean"}
_TRUE = ("true", "yes", "1", "on")
_FALSE = ("false", "no", "0", "off")


def parse_bool(text: str) -> bool:
    """'true'/'yes'/'1'/'on' or 'false'/'no'/'0'/'off', any case; else ValueError."""
    lowered = text.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"{text!r} is not true or false")


@dataclass(frozen=True)
class Param:
    """One option of a run command, and the config key that sets it in a study.

    `name` is the argparse dest and the field of TrainConfig or ClassifyConfig; the flag is
    `--name` with dashes. `default` is the command's: None is no value (an option left out),
    or, with `model_default`, the model's (`registry.Model.defaults[name]`, filled in by
    TrainConfig.resolved). `minimum`, `exclusive_minimum` and `maximum` bind the command and
    the config alike; `config_maximum` is a tighter cap for configs only (a study asking for
    more is likelier a typo than a plan; the study itself may pass the command more, as
    `--epochs` of a throughput run). `key` is the config key in its section (None: the command
    only); with `axis` the key holds a list, one run per value, and `axis` is the wildcard that
    names the value in the run's path. `config_default` is the key's default when it is not the
    command's (for an axis: the whole list). With `nullable` the config key may also be null,
    which leaves the option out of the study's command lines (the command's default, None).
    """

    name: str
    type: type
    help: str
    default: Any = None
    minimum: float | None = None
    exclusive_minimum: float | None = None
    maximum: float | None = None
    config_maximum: float | None = None
    choices: tuple[Any, ...] = ()
    model_default: bool = False
    key: str | None = None
    axis: str | None = None
    config_default: Any = None
    nullable: bool = False
    metavar: str | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def sweep(self) -> bool:
        """Whether the config key lists values, one run each (a sweep axis)."""
        return self.axis is not None

    @property
    def cli_metavar(self) -> str | None:
        return "{true,false}" if self.type is bool else self.metavar

    def problem(self, value: Any) -> str | None:
        """Why `value` (already of `type`) is out of the declared range, or None."""
        if self.choices and value not in self.choices:
            return f"must be one of {', '.join(map(str, self.choices))} (got {value})"
        if self.type is bool:
            return None
        positive = self.exclusive_minimum == 0
        if self.type is float and not math.isfinite(value):
            # Before the bounds: NaN passes no comparison and breaks no bound by name.
            return f"must be {'a positive finite number' if positive else 'finite'} (got {value})"
        if self.exclusive_minimum is not None and not value > self.exclusive_minimum:
            need = "a positive finite number" if positive else f"> {self.exclusive_minimum}"
            return f"must be {need} (got {value})"
        if self.minimum is not None and not value >= self.minimum:
            return f"must be >= {self.minimum} (got {value})"
        if self.maximum is not None and not value <= self.maximum:
            low = self.minimum if self.minimum is not None else self.exclusive_minimum
            span = f"in {low}..{self.maximum}" if low is not None else f"<= {self.maximum}"
            return f"must be {span} (got {value})"
        return None

    def parse(self, text: str) -> Any:
        """The command-line `text` as a value of `type` within the bounds; else ValueError with
        a message such as "must be >= 1 (got 0)"."""
        if self.type is bool:
            value: Any = parse_bool(text)
        else:
            try:
                value = self.type(text)
            except ValueError:
                noun = "an integer" if self.type is int else "a number"
                raise ValueError(f"{text!r} is not {noun}") from None
        problem = self.problem(value)
        if problem:
            raise ValueError(problem)
        return value

    def text(self, value: Any) -> str:
        """`value` as the command line writes it (booleans as true/false)."""
        return str(value).lower() if isinstance(value, bool) else str(value)

    def argv(self, value: Any) -> list[str]:
        """[flag, value] for a command line."""
        return [self.flag, self.text(value)]

    def cli_help(self) -> str:
        """The option's help: its text, its range where bounded above, and its default."""
        notes = []
        if self.maximum is not None:
            low = self.minimum if self.minimum is not None else self.exclusive_minimum
            notes.append(f"{low}..{self.maximum}")
        if self.model_default:
            notes.append(
                "default "
                + ", ".join(
                    f"{self.text(m.defaults[self.name])} for {m.name}"
                    for m in MODELS.values()
                    if m.defaults.get(self.name) is not None
                )
            )
        elif self.default is not None:
            notes.append(f"default {self.text(self.default)}")
        text = f"{self.help} ({'; '.join(notes)})" if notes else self.help
        return text.replace("%", "%%")  # argparse formats help with %

    @property
    def study_default(self) -> Any:
        """The config key's default: `config_default`, else the command's (the config
        model's for `model_default`), as a one-value list for an axis."""
        if self.config_default is not None:
            return self.config_default
        value = MODELS[CONFIG_MODEL].defaults[self.name] if self.model_default else self.default
        return [value] if self.sweep else value

    def schema(self) -> dict[str, Any]:
        """The config key's JSON schema: type, bounds, default and description."""
        item: dict[str, Any] = {"type": _JSON_TYPES[self.type]}
        if self.choices:
            item["enum"] = list(self.choices)
        cap = self.config_maximum if self.config_maximum is not None else self.maximum
        for word, bound in (
            ("minimum", self.minimum),
            ("exclusiveMinimum", self.exclusive_minimum),
            ("maximum", cap),
        ):
            if bound is not None:
                item[word] = bound
        if self.nullable:  # the bounds apply to numbers only: null passes them
            item["type"] = [item["type"], "null"]
        if self.sweep:
            item = {"type": "array", "minItems": 1, "uniqueItems": True, "items": item}
        return {**item, "default": self.study_default, "description": self.help}


# Options of `cnnpar train`, configured under train.tinycnn; in command-line order.
TRAIN: tuple[Param, ...] = (
    Param(
        "filters",
        int,
        "TinyCNN conv filters F",
        minimum=1,
        config_maximum=4096,
        model_default=True,
        key="filters",
        axis="filters",
    ),
    Param(
        "batch_size",
        int,
        "images per training step",
        minimum=1,
        config_maximum=60_000,
        model_default=True,
        key="batch_sizes",
        axis="batch",
    ),
    Param(
        "epochs",
        int,
        "passes over the training images",
        minimum=1,
        config_maximum=1000,
        model_default=True,
        key="epochs",
        config_default=2,
    ),
    Param(
        "lr",
        float,
        "learning rate: plain SGD for tinycnn, Adam for mosaicnet",
        exclusive_minimum=0,
        config_maximum=1000,
        model_default=True,
        key="lr",
    ),
    Param(
        "seed",
        int,
        "seed of the initial weights and the shuffling",
        default=0,
        minimum=0,
        key="seeds",
        axis="seed",
    ),
    Param(
        "train_size",
        int,
        "the first N training images",
        default=60_000,
        minimum=1,
        maximum=60_000,
        key="train_size",
    ),
    Param(
        "test_size",
        int,
        "the first N test images, evaluated after every epoch",
        default=10_000,
        minimum=1,
        maximum=10_000,
        key="test_size",
    ),
    Param(
        "shuffle",
        bool,
        "a seeded permutation of the training images per epoch; false: dataset order",
        default=True,
        key="shuffle",
    ),
    Param(
        "time_budget",
        float,
        "stop at the first step after SECONDS of timed training (throughput runs)",
        exclusive_minimum=0,
        config_maximum=3600,
        key="time_budget",
        config_default=2.0,
        metavar="SECONDS",
    ),
)

# Options of `cnnpar classify`, configured under classify; in command-line order.
CLASSIFY: tuple[Param, ...] = (
    Param(
        "batch_size",
        int,
        "cells per batch",
        default=256,
        minimum=1,
        config_maximum=100_000,
        key="batch_sizes",
        axis="batch",
    ),
    Param(
        "seed",
        int,
        "mosaic seed",
        default=0,
        minimum=0,
        key="seeds",
        axis="seed",
    ),
    Param(
        "repeats",
        int,
        "timed repeats, the pool kept alive",
        default=1,
        minimum=1,
        config_maximum=1000,
        key="repeats",
        config_default=3,
    ),
    Param(
        "time_budget",
        float,
        "classify whole batches from cell 0, cycling through the mosaic, until SECONDS of timed "
        "classification (at least one batch per worker or rank); --repeats then caps the full "
        "passes. Left out (null in a config): every repeat classifies the whole mosaic",
        exclusive_minimum=0,
        config_maximum=3600,
        key="time_budget",
        config_default=1.0,
        nullable=True,
        metavar="SECONDS",
    ),
)

# Where each set of parameters sits in the config.
SECTIONS: dict[str, tuple[Param, ...]] = {"train.tinycnn": TRAIN, "classify": CLASSIFY}
