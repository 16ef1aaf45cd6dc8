"""A tmpfs mounted for one test (a full or read-only disk, a read-only install or home)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


def tmpfs(where: Path, options: str) -> Iterator[Path]:
    """Mount a tmpfs with mount(8) `options` (e.g. "size=2m,ro") at the new directory `where`,
    yield it and unmount it lazily afterwards. Skips the test without root or where mounting
    is not allowed."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    where.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)
