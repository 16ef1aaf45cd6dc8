"""Atomic output helpers: every file is written to a temp name in its directory, then renamed.

A crash or a kill therefore leaves either the old file or the new one, never a half-written one,
which is what lets Snakemake (and a user) re-run and resume safely.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cnnpar.errors import CnnparError


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


class OutputDirError(CnnparError):
    """The output directory cannot be created or written to."""


def ensure_writable_dir(path: str | os.PathLike[str]) -> Path:
    """Create `path` if needed and check that we can write into it; raise a one-line error."""
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputDirError(
            f"cannot create output directory {out}: {err.strerror}; choose a writable --out"
        ) from None
    if not out.is_dir():
        raise OutputDirError(f"output path {out} is not a directory; choose a directory for --out")
    if not os.access(out, os.W_OK | os.X_OK):
        raise OutputDirError(f"output directory {out} is not writable; choose a writable --out")
    return out


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temp path beside `target`; on success rename it over `target`, else delete it."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        dir=target.parent, prefix=f".{target.name}.", suffix=".tmp" + target.suffix
    )
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp makes the file owner-only (0600); give it the mode a plain open() would.
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(target: str | os.PathLike[str], text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text)


def write_json(target: str | os.PathLike[str], obj: Any) -> None:
    write_text(target, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_csv(
    target: str | os.PathLike[str],
    rows: Sequence[Mapping[str, Any]],
    fieldnames: Sequence[str] | None = None,
) -> None:
    """Write dict rows as CSV; columns are `fieldnames` or the first row's keys in order."""
    if fieldnames is None:
        if not rows:
            raise ValueError(f"no rows to write to {target} and no header given")
        fieldnames = list(rows[0].keys())
    with atomic_path(target) as tmp, tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(fieldnames))
        writer.writeheader()
        writer.writerows(rows)


def write_npz(target: str | os.PathLike[str], **arrays: np.ndarray) -> None:
    with atomic_path(target) as tmp:
        # np.savez appends ".npz" to names without it; the temp name already ends in .npz.
        np.savez(tmp, **arrays)
