"""The registry is the one list of engines, modes, backends, models and figures."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from cnnpar import registry
from cnnpar.classify import runners


def test_registry_imports_neither_torch_numba_nor_matplotlib() -> None:
    code = (
        "import sys, cnnpar.registry; "
        "print(sorted(m for m in ('torch', 'numba', 'matplotlib') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("name", list(registry.ENGINES))
def test_every_engine_names_a_class_that_exists(name: str) -> None:
    entry = registry.ENGINES[name]
    if entry.device == "cuda" and name == "cuda":
        pytest.importorskip("numba.cuda")
    module = importlib.import_module(entry.module)
    assert hasattr(module, entry.cls), f"{entry.module}.{entry.cls}"
    assert entry.module.endswith("_engine")  # never shadows the library it wraps


def test_every_mode_names_its_runner() -> None:
    for mode in registry.MODES.values():
        assert isinstance(getattr(runners, mode.runner), type), mode.name


def test_every_table_figure_has_a_maker() -> None:
    from cnnpar.study import figures
    from cnnpar.study.tables import TABLE_NAMES

    for figure in registry.table_figures():
        assert callable(getattr(figures, figure.id)), figure.id
        assert set(figure.tables) <= set(TABLE_NAMES), figure.id
        assert figure.title and figure.caption.endswith(".")


def test_model_defaults_name_a_registered_engine() -> None:
    for model in registry.MODELS.values():
        assert model.default_engine in registry.engines_for(model.name)


def test_every_model_names_its_trainer() -> None:
    from cnnpar.nets import training

    for model in registry.MODELS.values():
        trainer = getattr(training, model.trainer)
        for method in ("memory_estimate", "build", "write"):
            assert callable(getattr(trainer, method)), (model.name, method)
        assert model.outputs and "run.json" not in model.outputs


def test_shapes_come_from_the_layout() -> None:
    for mode in registry.MODES.values():
        threads, processes = mode.host_threads(3), mode.worker_processes(3)
        assert threads == (3 if mode.parallel and mode.layout == "threads" else 1), mode.name
        assert processes == (3 if mode.layout == "processes" else 0), mode.name
    assert set(registry.gpu_engines()) == {e for e, x in registry.ENGINES.items() if x.gpu}
