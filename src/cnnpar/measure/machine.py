"""The machine identity every ratio and every comparison keys on.

Two jobs ran on the same machine when their CPU model, usable CPUs (the process's affinity:
taskset, cgroup cpusets, a SLURM binding), memory and GPU model agree, and so does the optional
label a user gives (`machine_label` in the config, `--machine-label` on the commands) to tell
apart setups the hardware alone does not (a BIOS setting, a power mode, a confined run). The
host name is recorded but is not part of the identity: two nodes of one type are one machine,
so a study spread over a homogeneous partition pairs across nodes, and one over two node types
does not.
"""

from __future__ import annotations

import math
import os
import socket
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

LABEL_CHARS = 64


@dataclass(frozen=True)
class Machine:
    """Where a job ran, as far as its timings are concerned.

    `memory_gib` is the total memory rounded to whole GiB (the kernel's reserve differs by a few
    MiB between nodes of one type); `gpu_model` is None without a CUDA device.
    """

    cpu_model: str
    cpus: int  # usable CPUs: this process's affinity
    memory_gib: int | None
    gpu_model: str | None
    label: str | None = None
    hostname: str | None = None  # recorded, not part of the identity

    @property
    def key(self) -> str:
        """The identity as one string (what tables group and pair on)."""
        parts = [self.label or "", self.cpu_model, str(self.cpus), str(self.memory_gib)]
        parts.append(self.gpu_model or "")
        return " | ".join(parts)

    @property
    def name(self) -> str:
        """For people: 'laptop (Intel i7-1185G7, 2 CPUs, 16 GiB)', label first if given."""
        memory = f", {self.memory_gib} GiB" if self.memory_gib is not None else ""
        gpu = f", {self.gpu_model}" if self.gpu_model else ""
        what = f"{self.cpu_model}, {self.cpus} CPU{'s' * (self.cpus != 1)}{memory}{gpu}"
        return f"{self.label} ({what})" if self.label else what

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Machine:
        return cls(**{k: data.get(k) for k in cls.__dataclass_fields__})

    @classmethod
    def from_environment(cls, env: Mapping[str, Any], label: str | None = None) -> Machine:
        """The identity of an environment record (records written before the machine was
        recorded on its own)."""
        return cls(
            cpu_model=str(env.get("cpu_model") or "unknown CPU"),
            cpus=int(env.get("cpus_available") or env.get("logical_cores") or 1),
            memory_gib=_whole_gib(env.get("ram_gib")),
            gpu_model=env.get("cuda_device") or None,
            label=label,
            hostname=env.get("hostname"),
        )


def _whole_gib(value: Any) -> int | None:
    try:
        gib = float(value)
    except (TypeError, ValueError):
        return None
    return max(1, round(gib)) if math.isfinite(gib) else None


def check_label(label: str | None) -> str | None:
    """A machine label as given, stripped; None for none. Raises ValueError for one that
    would not read as one word in a table (empty, too long, a line break or a '|')."""
    if label is None:
        return None
    text = label.strip()
    if not text or len(text) > LABEL_CHARS or any(c in text for c in "|\n\r\t"):
        raise ValueError(
            f"machine label {label!r} must be 1-{LABEL_CHARS} characters without '|', tabs "
            "or line breaks"
        )
    return text


def this_machine(label: str | None = None, cpus: int | None = None) -> Machine:
    """The identity of the machine this process runs on, as this process may use it; `cpus`
    replaces this process's affinity where the job may use more CPUs than this process (a rank
    pinned to its share of them)."""
    from cnnpar.measure.environment import _cpu_model, _ram_gib, cuda_device

    return Machine(
        cpu_model=_cpu_model(),
        cpus=len(os.sched_getaffinity(0)) if cpus is None else cpus,
        memory_gib=_whole_gib(_ram_gib()),
        gpu_model=cuda_device(),
        label=check_label(label),
        hostname=socket.gethostname(),
    )
