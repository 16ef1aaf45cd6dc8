"""The workflow on a real single-node SLURM cluster via `snakemake --profile profiles/slurm`."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from slurm_cluster import ClusterError, SlurmCluster, missing_requirements, single_node_cluster

pytestmark = pytest.mark.slurm


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    reason = missing_requirements()
    if reason is not None:
        if os.environ.get("CI") == "true":  # CI installs SLURM: a missing piece is a failure
            pytest.fail(f"CI=true but the slurm test cannot run: {reason}")
        pytest.skip(reason)
    try:
        with single_node_cluster(cpus=2) as cluster:
            yield cluster
    except ClusterError as err:
        pytest.fail(f"single-node SLURM cluster did not start:\n{err}")


def test_sbatch_runs_a_job(slurm_cluster: SlurmCluster, tmp_path) -> None:
    out = tmp_path / "hostname.out"
    job_id = slurm_cluster.run(
        "sbatch", "--parsable", f"--output={out}", f"--chdir={tmp_path}", "--wrap", "hostname"
    ).stdout.strip()
    fields = slurm_cluster.wait_for_job(job_id)
    assert fields["JobState"] == "COMPLETED", fields
    assert fields["Partition"] == slurm_cluster.partition
    assert out.read_text().strip() == os.uname().nodename
