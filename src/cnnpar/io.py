"""Atomic output helpers: every file is written to a temp name in its directory, then renamed,
and a run directory is written whole as a hidden sibling, then renamed into place.

A crash or a kill therefore leaves either the old output or the new one, never a half-written
one, which is what lets Snakemake (and a user) re-run and resume safely. A failed write raises
`WriteError`, an OSError that names the file and the cause on one line.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cnnpar.errors import CnnparError, WriteError
from cnnpar.record import RECORD_NAME


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


class OutputDirError(CnnparError):
    """The output directory cannot be created or written to."""


def _write_error(target: str | os.PathLike[str], err: OSError) -> WriteError:
    if isinstance(err, WriteError):
        return err
    return WriteError(err.errno or errno.EIO, err.strerror or str(err), str(target))


def check_run_directory(
    out: str | os.PathLike[str], outputs: Collection[str], option: str = "--out"
) -> Path:
    """Check, before any work and creating nothing, that `run_directory(out)` can write `out`.

    `out` may be missing (it is created at the end), or a directory that is empty or holds an
    earlier run (files named in `outputs`, or in its `run.json`): `run_directory` replaces it
    whole, so a directory holding anything else is refused rather than wiped.
    """
    shown = Path(out)
    target = Path(os.path.abspath(out))
    if target.exists():
        if not target.is_dir():
            raise OutputDirError(
                f"output path {shown} is not a directory; choose a directory for {option}"
            )
        cwd = Path.cwd()
        if target == cwd or target in cwd.parents:
            raise OutputDirError(
                f"{option} {shown} is the current directory or holds it; name a new directory"
            )
        names = set(os.listdir(target))
        others = sorted(names - {RECORD_NAME, *outputs, *_recorded_outputs(target)})
        if others:
            listed = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
            raise OutputDirError(
                f"{option} {shown} holds files that are not from a cnnpar run ({listed}); "
                "choose a new or empty directory"
            )
    # The run is written beside `out` and renamed into place: the nearest existing ancestor must
    # take a new directory. A real one, since permission bits pass read-only mounts and /proc.
    base = target.parent
    while not base.exists():
        base = base.parent
    if not base.is_dir():
        raise OutputDirError(
            f"cannot create output directory {shown}: {base} is not a directory; "
            f"choose a writable {option}"
        )
    try:
        os.rmdir(tempfile.mkdtemp(dir=base, prefix=".cnnpar-probe-"))
    except OSError as err:
        raise OutputDirError(
            f"cannot create output directory {shown}: {err.strerror or err}; "
            f"choose a writable {option}"
        ) from None
    return shown


def _recorded_outputs(directory: Path) -> list[str]:
    """The outputs an earlier run's record in `directory` lists, or none."""
    try:
        outputs = json.loads((directory / RECORD_NAME).read_text())["outputs"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    return [name for name in outputs if isinstance(name, str)] if isinstance(outputs, list) else []


def _make_dirs(path: Path) -> list[Path]:
    """mkdir -p `path`; return the directories this call created, deepest first."""
    missing = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    created = []
    for directory in reversed(missing):
        try:
            directory.mkdir()
        except FileExistsError:  # made by a concurrent run meanwhile: not ours to remove
            continue
        created.append(directory)
    return created[::-1]


def _remove_empty(directories: list[Path]) -> None:
    for directory in directories:
        try:
            directory.rmdir()
        except OSError:
            return


def _merge(tmp: Path, out: Path) -> None:
    for name in sorted(os.listdir(tmp), key=lambda n: n == RECORD_NAME):  # run.json last
        os.replace(tmp / name, out / name)
    tmp.rmdir()


def _publish(tmp: Path, out: Path, replace: bool) -> None:
    """Move the finished temporary directory `tmp` into place as `out` (see run_directory)."""
    if not replace and out.is_dir():
        _merge(tmp, out)
        return
    try:
        os.rename(tmp, out)  # atomic, and replaces an empty directory
        return
    except OSError as err:
        if err.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise
    if not replace:  # made meanwhile by someone else: add to it
        _merge(tmp, out)
        return
    # An earlier run is there: swap it out, so `out` is missing only between two renames.
    old = tmp.with_name(tmp.name.replace(".tmp-", ".old-", 1))
    os.rename(out, old)
    try:
        os.rename(tmp, out)
    except BaseException:
        os.rename(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def run_directory(out: str | os.PathLike[str], *, replace: bool = True) -> Iterator[Path]:
    """Yield an empty temporary directory to write a run into; it becomes `out` when the block
    ends without an exception.

    replace=True: `out` is the run's own directory. It is written as a hidden sibling,
    `.<name>.tmp-<pid>-<random>`, and renamed into place; an existing `out` (empty, or an earlier
    run: see `check_run_directory`) is renamed aside, the new one renamed in, the old deleted.
    replace=False: `out` may hold other files (a bench's `--csv` directory); the new files are
    moved into it one by one, `run.json` last, and nothing else there is touched.

    On any exception (a failed write, Ctrl-C, SIGTERM raised as an exception by the CLI) the
    temporary directory and any parent directory made for it are removed, so a failed run
    leaves nothing behind. OSErrors come out as `WriteError`s naming the final path.
    """
    shown = Path(out)
    out = Path(os.path.abspath(out))
    merge = not replace and out.is_dir()
    parent = out if merge else out.parent  # the same file system as `out`, so renames work
    try:
        created = _make_dirs(parent)
    except OSError as err:
        raise _write_error(shown, err) from err
    try:
        tmp = Path(tempfile.mkdtemp(dir=parent, prefix=f".{out.name}.tmp-{os.getpid()}-"))
        os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp makes it owner-only
    except OSError as err:
        _remove_empty(created)
        raise _write_error(shown, err) from err
    try:
        yield tmp
        _publish(tmp, out, replace)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        _remove_empty(created)
        if isinstance(exc, OSError):
            raise _shown_path(exc, tmp, shown) from exc
        raise


def _shown_path(err: OSError, tmp: Path, shown: Path) -> WriteError:
    """`err` as a WriteError naming the file where it was going to end up, not its temp path."""
    name = Path(err.filename) if err.filename else None
    if name is not None and name.is_relative_to(tmp):
        shown = shown / name.relative_to(tmp)
    elif isinstance(err, WriteError):
        return err
    return WriteError(err.errno or errno.EIO, err.strerror or str(err), str(shown))


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temp path beside `target`; on success rename it over `target`, else delete it.

    An OSError (a full disk, say) comes out as a `WriteError` naming `target`."""
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(
            dir=target.parent, prefix=f".{target.name}.", suffix=".tmp" + target.suffix
        )
        os.close(fd)
    except OSError as err:
        raise _write_error(target, err) from err
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp makes the file owner-only (0600); give it the mode a plain open() would.
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, target)
    except OSError as err:
        raise _write_error(target, err) from err
    finally:
        tmp.unlink(missing_ok=True)


def write_text(target: str | os.PathLike[str], text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text)


def write_bytes(target: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


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
