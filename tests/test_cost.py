"""The cost estimate printed before a study starts: its model, and the times earlier runs left."""

from __future__ import annotations

from pathlib import Path

import pytest
from workflow_helpers import REPO, load_config

from cnnpar.study import cost

TEMPLATES = {
    "train_family": "{root}/train/block~{block}/filters~{filters}/batch~{batch}/seed~{seed}.tsv",
    "train_gpu": "{root}/gpu/{engine}/block~{block}.tsv",
    "train_tinycnn_full": "{root}/train/full/{engine}/threads~{threads}.tsv",
    "train_mosaicnet": "{root}/train/mosaicnet/seed~{seed}.tsv",
    "classify_family": "{root}/classify/block~{block}/grid~{grid}/batch~{batch}/seed~{seed}.tsv",
    "classify_gpu": "{root}/cgpu/{mode}/block~{block}.tsv",
    "classify_full": "{root}/classify/full/grid~{grid}/seed~{seed}.tsv",
}


def templates(root: Path) -> dict[str, str]:
    return {name: t.replace("{root}", str(root)) for name, t in TEMPLATES.items()}


def estimate(root: Path) -> cost.Estimate:
    config = load_config(REPO / "tests/data/config.tiny.yaml")
    grids = ["10x10", "20x30"]
    return cost.estimate_study(config, ["numpy", "numba"], ["sequential", "processes"], grids,
                               templates(root), root)  # fmt: skip


def test_the_model_counts_every_timed_job_and_run(tmp_path: Path):
    e = estimate(tmp_path)
    # per block: one training family (numpy, numba 1,2 in one command) and two classification
    # families (one per grid: sequential, processes)
    assert (e.jobs_per_block, e.runs_per_block) == (3, 2 + 2 * 2)
    assert e.min_blocks == e.max_blocks == 2  # the tiny config fixes two blocks
    assert e.measured == 0 and e.block_s > 0 and e.other_s > 0
    budget = 0.2  # the tiny config's training budget: numba trains it at each of 2 counts
    train = cost.train_run_s("numpy", 1, budget) + cost.train_run_s("numba", 2, budget)
    assert train == pytest.approx(2 * cost.RUN_START_S + cost.PER_COUNT_S + 3 * budget)
    assert e.total_s(2) == pytest.approx(e.other_s + 2 * e.block_s)
    assert "3 timed jobs (6 runs) per block" in e.text() and "modelled" in e.text()


def test_earlier_runs_times_replace_the_model_and_fill_in_other_blocks(tmp_path: Path):
    path = Path(TEMPLATES["train_family"].format(root=tmp_path, block=1, filters=4, batch=32,
                                                 seed=0))  # fmt: skip
    path.parent.mkdir(parents=True)
    path.write_text("s\th:m:s\n100.0\t0:01:40\n")
    damaged = tmp_path / "classify/block~1/broken.tsv"
    damaged.parent.mkdir(parents=True)
    damaged.write_text("not a benchmark")
    before = estimate(tmp_path / "nothing")
    after = estimate(tmp_path)
    assert after.measured == 1
    train_model = before.block_s - after.block_s + 100.0
    assert train_model == pytest.approx(
        cost.train_run_s("numpy", 1, 0.2) + cost.train_run_s("numba", 2, 0.2)
    )
    # Block 2's job has no file of its own: the same family's time in block 1 stands in.
    assert cost.job_seconds(
        [cost.Job(str(path).replace("block~1", "block~2"), 1, 5.0)],
        cost.measured_seconds(tmp_path),
    ) == (100.0, 1)
    assert "timed by earlier runs" in after.text()


def test_a_classification_costs_at_most_its_budget_beyond_start_up():
    slow = cost.classify_run_s("sequential", 1, 1_000_000, repeats=5, budget=1.0)
    assert slow == pytest.approx(cost.RUN_START_S + 1.0)
    fast = cost.classify_run_s("sequential", 1, 100, repeats=2, budget=1.0)
    assert cost.RUN_START_S < fast < cost.RUN_START_S + 1.0
