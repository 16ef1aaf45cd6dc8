"""Shared fixtures, the gpu-marker skip, and what lets two pytest-xdist workers share a machine."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# pyproject's addopts run two pytest-xdist workers, each test file wholly on one (its module
# fixtures, such as a workflow run or the SLURM cluster, are made once). Each worker gets its
# own temporary directory, and with it its own default timing lock
# (cnnpar.measure.interference.DEFAULT_LOCK lives there): the workers' timed runs do not wait
# for each other, so no command prints the lock's "waiting" line into a one-line error a test
# checks. Set before cnnpar is imported.
if worker := os.environ.get("PYTEST_XDIST_WORKER"):
    own = Path(tempfile.gettempdir()) / f"cnnpar-tests-{worker}"
    own.mkdir(exist_ok=True)
    os.environ["TMPDIR"] = str(own)
    tempfile.tempdir = None


def _has_cuda_gpu() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:
        return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _has_cuda_gpu():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU; none found")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seeded random-init MosaicNet saved as a state_dict, as `cnnpar train` writes it: what
    classification and its faults do does not depend on the weights' values."""
    import torch

    from cnnpar.nets.mosaicnet import MosaicNet

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "model.pt"
    torch.save(MosaicNet().state_dict(), path)
    return path
