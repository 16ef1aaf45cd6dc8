"""Shared fixtures and the gpu-marker skip."""

from __future__ import annotations

from pathlib import Path

import pytest


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
