"""Every use of a Snakemake internal, each behind one small function.

Snakemake documents `workflow.source_path` and `workflow.current_basedir` for Snakefiles; what
cnnpar needs beyond them (the thread settings it must check, the executor, the shadow clean-up
after a crash, the default target of an included Snakefile) is read from attributes of its
`Workflow` object that no API promises. pyproject.toml pins Snakemake's major version, and
tests/test_snakemake_api.py runs each function inside a real Snakemake, so an upgrade that moves
one fails there, loudly, instead of silently changing what the study runs.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

# The Snakemake major version these functions are written against (pyproject.toml pins it).
SNAKEMAKE_MAJOR = 9


@dataclass(frozen=True)
class ThreadSettings:
    """What caps a job's threads: --cores, --max-threads (None: no cap) and the --set-threads
    overrides (rule name -> threads)."""

    cores: int | None
    max_threads: int | None
    overrides: dict[str, int]


def thread_settings(workflow: Any) -> ThreadSettings:
    """--cores, --max-threads and --set-threads as Snakemake took them."""
    settings = workflow.resource_settings
    overrides = {rule: int(n.value) for rule, n in settings.overwrite_threads.items()}
    return ThreadSettings(settings.cores, settings.max_threads, overrides)


def rules_with_resource(workflow: Any, resource: str) -> list[str]:
    """The names of the rules that declare `resource` (e.g. the timed rules' `bench`)."""
    return [rule.name for rule in workflow.rules if resource in rule.resources]


def executor_name(workflow: Any) -> str | None:
    """The executor plugin's name ('local', 'dryrun', 'touch', 'slurm', ...); None while the
    Snakefile is being parsed (the executor is set only when the DAG is built)."""
    plugin = workflow.executor_plugin
    return None if plugin is None else str(plugin.name)


def is_remote_job(workflow: Any) -> bool:
    """Whether this process is a cluster job re-parsing the Snakefile, not the submitter."""
    return bool(workflow.remote_exec)


def is_touch(workflow: Any) -> bool:
    """Whether this run only touches outputs (--touch)."""
    return bool(workflow.touch)


def cleanup_shadow(workflow: Any) -> None:
    """Remove the shadow directories that killed runs left behind (call it while holding the
    working directory's lock, at start-up)."""
    workflow.persistence.cleanup_shadow()


def set_default_target(workflow: Any, rule: str) -> None:
    """Make `rule` the default target (a Snakefile that includes another loses the default
    target the included one set)."""
    workflow.default_target = rule


def local_executor(name: str | None, local: Iterable[str] = ("local", "dryrun", "touch")) -> bool:
    """Whether jobs run on this machine under executor `name` (None: not known yet)."""
    return name is None or name in local
