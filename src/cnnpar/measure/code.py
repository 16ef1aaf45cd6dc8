"""The version of the measured code: a hash of the package sources a kind of timed run executes.

Kinds: "train" (TinyCNN training), "mosaicnet" (the classifier's training) and "classify".

A rate belongs to the code that produced it. The workflow gives each timed rule the version of
its kind's code as a parameter, so Snakemake re-runs exactly the timed jobs whose code changed
(its `params` rerun trigger), and every run record carries the versions, so the tables never
divide the rates of two code versions (like two machines, such a pair is "not formed").

The hash covers the contents and package-relative names of the Python sources, so moving the
checkout, another shell, or a change to the docs, the tests, the workflow or the study's own
aggregation code (tables, figures, report) changes nothing. Each kind leaves out the code only
the other kind runs: a change to a TinyCNN engine re-runs the training jobs, not the
classifications.
"""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1]

# Package paths (relative, POSIX) that no timed run executes: the aggregation and the plan, the
# bench front end, the report template. A prefix ending in "/" is a directory.
NOT_MEASURED = ("study/", "bench/", "templates/", "data/")
# What each kind of timed run leaves out besides: the code only the other kind runs.
KIND_EXCLUDES: dict[str, tuple[str, ...]] = {
    "train": ("classify/", "mosaic.py"),
    # MosaicNet's training, whose weights every classification reads: a change to a TinyCNN
    # engine must not retrain it (and so re-run the classifications).
    "mosaicnet": ("classify/", "mosaic.py", "nets/tinycnn/"),
    "classify": ("nets/tinycnn/", "train.py", "nets/training.py"),
}
KINDS = tuple(KIND_EXCLUDES)


def measured_sources(kind: str, root: Path = PACKAGE) -> list[Path]:
    """The Python sources under `root` that a timed run of `kind` executes, sorted.

    Raises KeyError for a kind other than those of KIND_EXCLUDES."""
    excluded = (*NOT_MEASURED, *KIND_EXCLUDES[kind])
    sources = []
    for path in sorted(root.rglob("*.py")):
        name = path.relative_to(root).as_posix()
        if "__pycache__" in name or any(name.startswith(prefix) for prefix in excluded):
            continue
        sources.append(path)
    return sources


@cache
def code_version(kind: str, root: Path = PACKAGE) -> str:
    """12 hex digits of SHA-256 over the names and contents of `measured_sources(kind)`."""
    digest = hashlib.sha256()
    for path in measured_sources(kind, root):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def code_versions(root: Path = PACKAGE) -> dict[str, str]:
    """The code version of every kind, as run records carry them."""
    return {kind: code_version(kind, root) for kind in KINDS}
