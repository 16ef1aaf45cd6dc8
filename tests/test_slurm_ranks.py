"""Ranked jobs on a real single-node SLURM cluster through `profiles/slurm`: a 2-rank torch-ddp
training and a 2-rank classification, each one SLURM job whose ranks are its srun tasks."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml
from slurm_cluster import ClusterError, SlurmCluster, missing_requirements, single_node_cluster
from workflow_helpers import REPO, SNAKEFILE, TINY

pytestmark = pytest.mark.slurm

PROFILE = REPO / "profiles" / "slurm"
RUN_TIMEOUT_S = 540
CLUSTER_FLAGS = (  # this test cluster only: see tests/test_slurm.py
    "--slurm-status-command=squeue",
    "--slurm-no-account",
    "--slurm-init-seconds-before-status-checks=1",
)
SUBMITTED = re.compile(r"Job \d+ has been submitted with SLURM jobid (\d+) \(log: (\S+)\)\.")
# torch at 2 threads (1 rank) beside torch-ddp at 2 ranks x 1 thread; sequential beside ranks
OVERRIDE = {
    "blocks": 1,
    "train": {"tinycnn": {"engines": ["torch", "torch-ddp"], "threads": [2], "ranks": [2],
                          "epochs": 1, "shuffle": False}},
    "classify": {"modes": ["sequential", "ranks"], "workers": [2], "ranks": [2],
                 "grids": ["10x10"], "repeats": 1},
}  # fmt: skip
TINYCNN = "results/train/tinycnn/engine~{engine}/ranks~{ranks}/threads~2/filters~4/batch~32/seed~0"
CLASSIFY = "results/classify/mode~{mode}/ranks~{ranks}/workers~{workers}/grid~10x10/batch~64/seed~0"


@pytest.fixture(scope="module")
def slurm_cluster() -> Iterator[SlurmCluster]:
    reason = missing_requirements()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but the slurm test cannot run: {reason}")
        pytest.skip(reason)
    try:
        with single_node_cluster(
            cpus=2, keep_dir=bool(os.environ.get("CNNPAR_KEEP_SLURM_DIR"))
        ) as c:
            yield c
    except ClusterError as err:
        pytest.fail(f"single-node SLURM cluster did not start:\n{err}")


@pytest.fixture(scope="module")
def ranked_run(
    slurm_cluster: SlurmCluster, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, str]:
    workdir = tmp_path_factory.mktemp("slurm-ranks")
    config = workdir / "ranks.yaml"
    config.write_text(yaml.safe_dump(OVERRIDE))
    targets = [
        f"{TINYCNN.format(engine='torch', ranks=1)}/full/weights_final.npz",
        f"{TINYCNN.format(engine='torch-ddp', ranks=2)}/full/weights_final.npz",
        f"{CLASSIFY.format(mode='sequential', ranks=1, workers=1)}/block~1/predictions.npz",
        f"{CLASSIFY.format(mode='ranks', ranks=2, workers=2)}/block~1/predictions.npz",
    ]
    env = dict(slurm_cluster.env)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # cnnpar
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", f"--snakefile={SNAKEFILE}", f"--directory={workdir}",
         f"--profile={PROFILE}", "--configfile", str(TINY), str(config), *CLUSTER_FLAGS,
         *targets],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    return workdir, output


def _ranks_of(record: dict) -> list[dict]:
    ranks = record["results"]["ranks"]
    assert [r["rank"] for r in ranks] == [0, 1]
    assert {r["launcher"] for r in ranks} == {"srun"}
    assert [r["slurm_procid"] for r in ranks] == ["0", "1"]  # two tasks ...
    assert len({(r["slurm_job_id"], r["slurm_step_id"]) for r in ranks}) == 1  # ... of one step
    assert len({r["pid"] for r in ranks}) == 2
    # one CPU each (SLURM's binding, or the task's own where the cluster binds none)
    assert all(len(r["cpu_affinity"]) == 1 and r["torch_threads"] == 1 for r in ranks), ranks
    assert ranks[0]["cpu_affinity"] != ranks[1]["cpu_affinity"]
    return ranks


def test_ddp_ranks_are_tasks_of_one_job_and_match_one_rank(ranked_run) -> None:
    workdir, output = ranked_run
    ddp_dir = f"{TINYCNN.format(engine='torch-ddp', ranks=2)}/full"
    record = json.loads((workdir / ddp_dir / "run.json").read_text())
    ranks = _ranks_of(record)
    assert record["parallelism"] == {**record["parallelism"], "requested": 2, "processes": 2}
    assert "srun --kill-on-bad-exit=1 --cpus-per-task=1 -n 2 cnnpar train" in output
    slurm_ids = {r["slurm_job_id"] for r in ranks}
    assert slurm_ids <= set(submitted_ids(output)), (slurm_ids, output[-2000:])
    one = np.load(workdir / TINYCNN.format(engine="torch", ranks=1) / "full/weights_final.npz")
    two = np.load(workdir / ddp_dir / "weights_final.npz")
    assert sorted(one.files) == sorted(two.files)
    for key in one.files:  # float32 sums in another order: the engines' equivalence tolerance
        np.testing.assert_allclose(two[key], one[key], rtol=1e-4, atol=1e-5, err_msg=key)


def test_ranks_mode_ranks_are_tasks_of_one_job_and_predict_as_sequential(ranked_run) -> None:
    workdir, output = ranked_run
    ranks_dir = f"{CLASSIFY.format(mode='ranks', ranks=2, workers=2)}/block~1"
    record = json.loads((workdir / ranks_dir / "run.json").read_text())
    ranks = _ranks_of(record)
    assert [r["cells"] for r in ranks] == [64, 36]  # 100 cells in batches of 64
    assert "srun --kill-on-bad-exit=1 --cpus-per-task=1 -n 2 cnnpar classify" in output
    assert {r["slurm_job_id"] for r in ranks} <= set(submitted_ids(output))
    seq = f"{CLASSIFY.format(mode='sequential', ranks=1, workers=1)}/block~1"
    expected = np.load(workdir / seq / "predictions.npz")
    got = np.load(workdir / ranks_dir / "predictions.npz")
    assert np.array_equal(got["pred"], expected["pred"])
    assert np.array_equal(got["index"], expected["index"])


def submitted_ids(output: str) -> list[str]:
    """The SLURM job ids Snakemake submitted."""
    return [i for i, _ in SUBMITTED.findall(output)]
