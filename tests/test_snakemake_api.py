"""Each Snakemake internal cnnpar reads, exercised inside a real Snakemake run: an upgrade that
moves one fails here, by name, instead of silently changing what the study runs."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from cnnpar.study import snakemake_api

SNAKEFILE = """
import json
from cnnpar.study import snakemake_api as smk

seen = {"parse_executor": smk.executor_name(workflow), "remote": smk.is_remote_job(workflow)}

def probe(wildcards):
    seen["executor"] = smk.executor_name(workflow)
    seen["touch"] = smk.is_touch(workflow)
    settings = smk.thread_settings(workflow)
    seen["cores"], seen["max_threads"] = settings.cores, settings.max_threads
    seen["overrides"] = settings.overrides
    seen["bench_rules"] = smk.rules_with_resource(workflow, "bench")
    return []

onstart:
    smk.cleanup_shadow(workflow)

rule other:
    output: "other.txt"
    shell: "touch {output}"

rule timed:
    input: probe
    output: "seen.json"
    resources: bench=1
    threads: 2
    run:
        with open(output[0], "w") as f:
            json.dump(seen, f)

smk.set_default_target(workflow, "timed")
"""


def test_the_installed_snakemake_is_the_major_version_the_wrappers_read():
    assert int(version("snakemake").split(".")[0]) == snakemake_api.SNAKEMAKE_MAJOR


@pytest.mark.slow  # a real Snakemake run
def test_every_wrapped_internal_works_in_a_real_run(tmp_path: Path):
    (tmp_path / "Snakefile").write_text(SNAKEFILE)
    stale = tmp_path / ".snakemake/shadow/stale-job"
    stale.mkdir(parents=True)  # what a killed run leaves behind
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "3", "--max-threads", "2",
         "--set-threads", "other=1"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    seen = json.loads((tmp_path / "seen.json").read_text())  # the default target ran
    assert not (tmp_path / "other.txt").exists()
    assert seen == {
        "parse_executor": None,
        "remote": False,
        "executor": "local",
        "touch": False,
        "cores": 3,
        "max_threads": 2,
        "overrides": {"other": 1},
        "bench_rules": ["timed"],
    }
    assert not stale.exists()


def test_local_executors_are_told_from_cluster_ones():
    assert snakemake_api.local_executor(None) and snakemake_api.local_executor("dryrun")
    assert not snakemake_api.local_executor("slurm")
