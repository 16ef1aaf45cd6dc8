"""The run record: one typed, versioned `run.json` per run of `cnnpar train` or `cnnpar classify`
(`cnnpar bench` runs them too).

Everything downstream (tables, figures, the report, `compare`) reads these records and never
re-parses where a file lives. A record says what was asked (`params`, one stable key per
parameter), what ran (`parallelism`, read back from the libraries), what came out (`results`,
`outputs` relative to the record's directory) and where (`machine`, the identity ratios and
comparisons key on, and `environment`: the software, the host, the limits the run ran under,
read where they apply, and numba's effective settings). `not_as_named` says when an engine did
not run as named (numba's CUDA simulator, JIT off); the report flags those.

Bump SCHEMA_VERSION when a key changes meaning or goes away; `read` refuses any version it
does not know with a one-line error instead of producing wrong tables. Version 2 records (before
the machine identity) are read with the identity taken from their environment.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from cnnpar.errors import CnnparError
from cnnpar.measure.interference import Interference
from cnnpar.measure.machine import Machine

SCHEMA_VERSION = 3
READABLE_VERSIONS = (2, 3)  # 2: no `machine`; it is derived from the environment
RECORD_NAME = "run.json"

Command = Literal["train", "classify"]
COMMANDS: tuple[str, ...] = ("train", "classify")


class RecordError(CnnparError):
    """A run.json that is missing, damaged, or of another schema version."""


@dataclass(frozen=True)
class Parallelism:
    """What the run asked for and what it ran with.

    `requested` is the thread count (train) or worker count (classify) the command was given;
    `effective` the number of cores' worth of workers that actually ran: the engine's threads,
    or processes × torch threads per process, at most the CPUs the process could use (workers
    beyond them take turns, as under `taskset`).
    """

    requested: int
    effective: int
    processes: int = 1
    threads: dict[str, int | None] = field(default_factory=dict)  # per library, one process


@dataclass(frozen=True)
class RunRecord:
    command: Command  # what wrote it: train or classify
    model: str  # tinycnn or mosaicnet
    params: dict[str, Any]  # what was asked: every parameter under one stable key, block included
    parallelism: Parallelism  # what was asked and what took effect
    results: dict[str, Any]  # what came out: rates, seconds, accuracy, warm-up
    outputs: list[str]  # the run directory's other files, relative to it
    environment: dict[str, Any]  # software, host, limits, numba's settings (measure.environment)
    # The guard around the timed region (lock wait, probes, others' CPU share); None for
    # records of untimed work.
    interference: Interference | None = None
    # Where it ran; None only for records built by hand (read() always fills it in).
    machine: Machine | None = None
    schema_version: int = SCHEMA_VERSION  # see the module docstring for when to bump it

    @property
    def machine_identity(self) -> Machine:
        """The machine, from the environment when the record predates the field."""
        return self.machine or Machine.from_environment(self.environment)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def write(self, out_dir: str | os.PathLike[str]) -> Path:
        """Write `run.json` atomically into `out_dir`; write it last, as it marks the run done."""
        from cnnpar.io import write_json

        target = Path(out_dir) / RECORD_NAME
        write_json(target, self.to_dict())
        return target

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "run record") -> RunRecord:
        version = data.get("schema_version")
        if version not in READABLE_VERSIONS:
            readable = ", ".join(map(str, READABLE_VERSIONS))
            raise RecordError(
                f"{where} has schema_version {version!r}, this cnnpar reads {readable}; "
                "re-run the job that wrote it"
            )
        command = data.get("command")
        if command not in COMMANDS:
            if str(command).startswith("bench-"):  # the old benches wrote one of their own
                raise RecordError(
                    f"{where} is an old `cnnpar bench` record ({command}), which cnnpar no longer "
                    "reads; re-run `cnnpar bench train|classify --out DIR` for run records"
                )
            raise RecordError(f"{where} has unknown command {command!r}; re-run its job")
        try:
            guard = data.get("interference")
            machine = data.get("machine")
            environment = dict(data["environment"])
            return cls(
                command=data["command"],
                model=data["model"],
                params=dict(data["params"]),
                parallelism=Parallelism(**data["parallelism"]),
                results=dict(data["results"]),
                outputs=list(data["outputs"]),
                environment=environment,
                interference=Interference(**guard) if guard is not None else None,
                machine=Machine.from_dict(machine)
                if isinstance(machine, Mapping)
                else Machine.from_environment(environment),
                schema_version=version,
            )
        except (KeyError, TypeError) as err:
            raise RecordError(f"{where} is incomplete ({type(err).__name__}: {err})") from None

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> RunRecord:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise RecordError(f"{path} not found; re-run the job that writes it") from None
        except (OSError, ValueError) as err:
            raise RecordError(f"{path} is not readable JSON ({err}); re-run its job") from None
        if not isinstance(data, dict):
            raise RecordError(f"{path} does not hold a run record; re-run its job")
        return cls.from_dict(data, where=str(path))

    def engines(self) -> list[str]:
        """The engines this run trained with (none for classification)."""
        return [str(self.params["engine"])] if "engine" in self.params else []

    def not_as_named(self) -> list[str]:
        """Why this run did not run as its parameters say; empty when it did.

        An engine compiled by numba that ran in numba's CUDA simulator or with the JIT off (its
        recorded `numba_settings`), and threads that ran on fewer CPUs than the job started
        with because a library bound the process to fewer once it started (OMP_PROC_BIND).
        Records written before numba's settings were recorded give no engine reasons.
        """
        from cnnpar.measure.numba_settings import not_as_named
        from cnnpar.registry import ENGINES

        reasons = []
        numba = self.environment.get("numba_settings") or {}
        for name in self.engines():
            target = ENGINES[name].numba_target if name in ENGINES else None
            reason = not_as_named(target, numba) if target else None
            if reason:
                reasons.append(f"engine {name} ran {reason}")
        cpus, at_start = (self.environment.get(k) for k in ("cpus_available", "cpus_at_start"))
        if (
            isinstance(cpus, int)
            and isinstance(at_start, int)
            and cpus < at_start
            and self.parallelism.requested > cpus
        ):
            reasons.append(
                f"its {self.parallelism.requested} threads ran on {cpus} CPU(s), not the "
                f"{at_start} it started with (OMP_PROC_BIND or a library bound it)"
            )
        return reasons

    @property
    def code_version(self) -> str:
        """The version of the code this run measured (cnnpar.measure.code: a hash of the
        sources its kind executes); 'unknown' for records from before it was kept."""
        versions = self.environment.get("code_versions") or {}
        kind = "mosaicnet" if (self.command, self.model) == ("train", "mosaicnet") else self.command
        return str(versions.get(kind) or "unknown")

    def columns(self) -> dict[str, Any]:
        """The record as flat table columns: parameters by name, then `parallelism_*`,
        `processes`, the per-library thread counts, results, and the environment as `env.*`."""
        flat: dict[str, Any] = {"command": self.command, "model": self.model}
        # a repeated option (--mirror) is a list: one cell holds it, space-separated
        flat.update({k: v if _scalar(v) else " ".join(map(str, v)) for k, v in self.params.items()})
        flat["parallelism_requested"] = self.parallelism.requested
        flat["parallelism"] = self.parallelism.effective
        flat["processes"] = self.parallelism.processes
        flat.update(self.parallelism.threads)
        flat.update({k: v for k, v in self.results.items() if _scalar(v)})
        flat.update({f"env.{k}": v for k, v in self.environment.items() if _scalar(v)})
        flat["not_as_named"] = "; ".join(self.not_as_named())
        flat["code_version"] = self.code_version
        machine = self.machine_identity
        flat["machine"] = machine.key
        flat["machine_name"] = machine.name
        flat.update({f"machine.{k}": v for k, v in machine.as_dict().items()})
        if self.interference is not None:
            guard = self.interference.as_dict()
            flat["flag_reasons"] = "; ".join(guard.pop("reasons"))
            guard.pop("seconds")
            guard.pop("cpus")
            flat.update(guard)
        flat["schema_version"] = self.schema_version
        return flat


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)
