"""Shared fixtures and the gpu-marker skip."""

from __future__ import annotations

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
