"""What backend "auto" stands for on the CPU: the fastest candidate, measured once per machine,
torch version and batch size, kept in a cache, and recorded in the run record."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cnnpar import classify
from cnnpar.classify import backends
from cnnpar.classify.config import ClassifyConfig
from cnnpar.record import RECORD_NAME, RunRecord


def _rates(fast: str) -> dict[str, float]:
    return {name: 2_000.0 if name == fast else 1_000.0 for name in backends.CPU_CANDIDATES}


def test_the_fastest_candidate_is_chosen_and_the_evidence_names_every_rate() -> None:
    best, why = backends.fastest({"eager": 10.0, "mkldnn": 30.0, "jit": 20.0})
    assert best == "mkldnn"
    assert why == "fastest of eager 10, mkldnn 30, jit 20 images/s"


def test_the_choice_is_measured_once_then_read_from_the_cache(tmp_path: Path) -> None:
    calls: list[int] = []

    def measure(batch_size: int) -> dict[str, float]:
        calls.append(batch_size)
        return _rates("jit")

    cache = tmp_path / "backends.json"
    first = backends.choose_cpu_backend(256, "cpu A", None, measure, cache)
    again = backends.choose_cpu_backend(256, "cpu A", None, measure, cache)
    other_batch = backends.choose_cpu_backend(64, "cpu A", None, measure, cache)
    other_machine = backends.choose_cpu_backend(256, "cpu B", None, measure, cache)
    assert first == again and first[0] == "jit" and "batch 256" in first[1]
    assert other_batch[0] == other_machine[0] == "jit"
    assert calls == [256, 64, 256]  # once per (machine, batch size)
    assert len(json.loads(cache.read_text())) == 3


def test_an_unusable_cache_is_measured_again_and_an_unwritable_one_is_left_alone(
    tmp_path: Path,
) -> None:
    cache = tmp_path / "backends.json"
    cache.write_text("{not json")
    assert backends.choose_cpu_backend(8, "m", None, lambda b: _rates("eager"), cache)[0] == "eager"
    backends.choose_cpu_backend(8, "m", None, lambda b: _rates("eager"), cache)
    known = json.loads(cache.read_text())
    stale = {key: {"eager": 1.0} for key in known}  # a candidate set of another version
    cache.write_text(json.dumps(stale))
    assert backends.choose_cpu_backend(8, "m", None, lambda b: _rates("mkldnn"), cache)[0] == (
        "mkldnn"
    )
    nowhere = tmp_path / "a-file" / "backends.json"  # its directory cannot be made
    nowhere.parent.write_text("")
    chosen = backends.choose_cpu_backend(8, "m", None, lambda b: _rates("jit"), nowhere)
    assert chosen[0] == "jit" and not nowhere.exists()


def test_the_measurement_times_every_candidate_at_one_thread() -> None:
    import torch

    threads = torch.get_num_threads()
    rates = backends.measure_cpu_backends(4)
    assert set(rates) == set(backends.CPU_CANDIDATES)
    assert all(rate > 0 for rate in rates.values())
    assert torch.get_num_threads() == threads


@pytest.mark.slow  # seconds: classifies
def test_a_run_records_what_auto_chose_and_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cnnpar.nets.mosaicnet import MosaicNet

    monkeypatch.setattr(backends, "measure_cpu_backends", lambda b: _rates("channels-last"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    weights = tmp_path / "model.pt"
    backends.torch.save(MosaicNet().state_dict(), weights)
    out = tmp_path / "run"
    classify.run(ClassifyConfig(weights=weights, rows=4, cols=4, out=out, batch_size=8))
    params = RunRecord.read(out / RECORD_NAME).params
    assert params["requested_backend"] == "auto"
    assert params["backend"] == params["chosen_backend"] == "channels-last"
    assert params["backend_choice"].startswith("fastest of eager 1,000, channels-last 2,000")


def test_a_known_choice_is_read_without_waiting_for_the_timing_lock(tmp_path: Path) -> None:
    """A rank that srun started decides while rank 0 may hold the lock: a choice already in
    the cache must not wait for it."""
    import threading

    from cnnpar.measure.interference import timing_lock

    cache, lock = tmp_path / "backends.json", tmp_path / "timing.lock"
    backends.choose_cpu_backend(16, "m", lock, lambda b: _rates("mkldnn"), cache)
    got: list[str] = []
    with timing_lock(lock):
        reader = threading.Thread(
            target=lambda: got.append(backends.choose_cpu_backend(16, "m", lock, None, cache)[0])
        )
        reader.start()
        reader.join(timeout=30)
    assert got == ["mkldnn"]
