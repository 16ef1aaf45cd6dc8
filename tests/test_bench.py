"""`cnnpar bench train` end to end on a tiny configuration: rows, ratios, CSV and targets."""

from __future__ import annotations

import csv

from cnnpar import bench


def test_train_bench_measures_every_engine_and_pairs_thread_counts(
    tmp_path, monkeypatch, capsys
) -> None:
    monkeypatch.setattr(bench, "CPU_CONFIGS", ((2, 8),))
    monkeypatch.setattr(bench, "BENCH_IMAGES", 256)
    out = tmp_path / "bench.csv"
    rows = bench.train_bench(quick=True, seconds=0.02, csv_path=str(out))

    measured = {(r.engine, r.threads) for r in rows}
    assert measured == {("numpy", 1), ("numba", 1), ("numba", 2), ("torch", 1), ("torch", 2)}
    for row in rows:
        assert row.images_per_s > 0 and row.repeats == 3
        assert row.images_per_s_q1 <= row.images_per_s <= row.images_per_s_q3
        # A speedup exists only where there is a 1-thread run of the same engine to pair with.
        if row.threads == 1:
            assert row.speedup is None
        else:
            assert row.speedup_q1 <= row.speedup <= row.speedup_q3
            assert row.speedup > 0
    with out.open() as f:
        written = list(csv.DictReader(f))
    assert len(written) == len(rows)
    assert {"speedup", "roofline_fraction", "images_per_s"} <= set(written[0])

    printed = capsys.readouterr().out
    assert "glibc malloc" in printed or "LD_PRELOAD=" in printed, "the allocator is stated"
    assert "two independent 1-thread numba trainings at once" in printed
    assert "2 threads / 1 thread (paired rounds)" in printed


def test_copies_scaling_is_a_positive_ratio() -> None:
    median, q1, q3 = bench.copies_scaling(2, 8, repeats=3, seconds=0.02)
    assert 0 < q1 <= median <= q3 < 4
