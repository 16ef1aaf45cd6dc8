"""The measured code's version: what changes it, and what does not."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cnnpar.measure import code
from cnnpar.record import Parallelism, RunRecord


@pytest.fixture
def package(tmp_path: Path) -> Path:
    """A copy of the installed package's sources (no data files) to change freely."""
    copy = tmp_path / "a" / "cnnpar"
    shutil.copytree(code.PACKAGE, copy, ignore=shutil.ignore_patterns("data", "__pycache__"))
    return copy


def versions(root: Path) -> dict[str, str]:
    code.code_version.cache_clear()
    return code.code_versions(root)


def test_moving_the_sources_changes_no_version(package: Path, tmp_path: Path):
    moved = tmp_path / "elsewhere" / "cnnpar"
    shutil.copytree(package, moved)
    assert versions(package) == versions(moved) == versions(code.PACKAGE)


@pytest.mark.parametrize(
    ("changed", "kinds"),
    [
        ("nets/tinycnn/numba_engine.py", {"train"}),  # a TinyCNN engine: its training only
        ("classify/runners.py", {"classify"}),
        ("nets/mosaicnet.py", {"train", "mosaicnet", "classify"}),  # every kind runs it
        ("measure/timing.py", {"train", "mosaicnet", "classify"}),
        ("study/tables.py", set()),  # aggregation: no timed run executes it
        ("study/report.py", set()),
    ],
)
def test_a_change_moves_the_versions_of_the_kinds_that_run_it(package, changed, kinds):
    before = versions(package)
    path = package / changed
    path.write_text(path.read_text() + "\n# changed\n")
    after = versions(package)
    assert {k for k in code.KINDS if after[k] != before[k]} == kinds


def test_a_record_names_the_version_of_its_own_kind():
    env = {"code_versions": {"train": "aaa", "mosaicnet": "bbb", "classify": "ccc"}}

    def record(command: str, model: str, environment: dict) -> RunRecord:
        return RunRecord(command, model, {}, Parallelism(1, 1), {}, [], environment)

    assert record("train", "tinycnn", env).code_version == "aaa"
    assert record("train", "mosaicnet", env).code_version == "bbb"
    assert record("classify", "mosaicnet", env).code_version == "ccc"
    assert record("train", "tinycnn", {}).code_version == "unknown"  # an older record
