"""The workflow on a real single-node SLURM cluster via `snakemake --profile profiles/slurm`."""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from slurm_cluster import ClusterError, SlurmCluster, missing_requirements, single_node_cluster
from workflow_helpers import (
    FIGURE_STEMS,
    REPO,
    SHIM_MESSAGE,
    SNAKEFILE,
    TINY,
    expected_jobs,
    fail_once_shim,
    load_config,
    paired_classify_runs,
    paired_train_runs,
)

pytestmark = pytest.mark.slurm


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    reason = missing_requirements()
    if reason is not None:
        if os.environ.get("CI") == "true":  # CI installs SLURM: a missing piece is a failure
            pytest.fail(f"CI=true but the slurm test cannot run: {reason}")
        pytest.skip(reason)
    # CNNPAR_KEEP_SLURM_DIR=1 keeps slurm.conf and the daemon logs for a post-mortem.
    keep = bool(os.environ.get("CNNPAR_KEEP_SLURM_DIR"))
    try:
        with single_node_cluster(cpus=2, keep_dir=keep) as cluster:
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


# --- the workflow through the cluster profile ----------------------------------------------

PROFILE = REPO / "profiles" / "slurm"
RUN_TIMEOUT_S = 480  # one snakemake invocation; the faulted first run takes ~3.5 min here
# Flags for this test cluster only. Without accounting, sacct knows nothing and the plugin
# must poll squeue (it would otherwise wait forever after the jobs finish); there is no
# account to charge; and a 1 s first poll keeps the short jobs from idling in the queue.
CLUSTER_FLAGS = (
    "--slurm-status-command=squeue",
    "--slurm-no-account",
    "--slurm-init-seconds-before-status-checks=1",
)
# One paired block is enough to show scheduling, failure and resumption through SLURM, and
# halves the jobs the cluster runs (the local workflow test runs the tiny config's two).
BLOCKS = 1
# "Job 3 has been submitted with SLURM jobid 17 (log: /abs/.snakemake/slurm_logs/...)."
SUBMITTED = re.compile(r"Job \d+ has been submitted with SLURM jobid (\d+) \(log: (\S+)\)\.")
LOCAL_RULES = ("all", "mask_figure")  # the Snakefile's localrules


@dataclass
class Submission:
    slurm_id: str
    log: Path

    @property
    def rule(self) -> str:
        """The rule name, from the log path .snakemake/slurm_logs/rule_<rule>/..."""
        return next(p for p in self.log.parts if p.startswith("rule_")).removeprefix("rule_")

    @property
    def job(self) -> str:
        """The job: its rule and wildcard values, from .../rule_<rule>/<wildcards>/<id>.log."""
        return str(self.log.parent)


@dataclass
class WorkflowRun:
    returncode: int
    output: str

    @property
    def submissions(self) -> list[Submission]:
        return [Submission(i, Path(log)) for i, log in SUBMITTED.findall(self.output)]


def run_workflow(workdir: Path, env: dict[str, str]) -> WorkflowRun:
    """`snakemake --profile profiles/slurm` on the tiny config, in `workdir`, bounded in time."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            f"--snakefile={SNAKEFILE}",
            f"--directory={workdir}",
            f"--profile={PROFILE}",
            f"--configfile={TINY}",
            f"--config=blocks={BLOCKS}",
            *CLUSTER_FLAGS,
        ],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    return WorkflowRun(result.returncode, result.stdout + result.stderr)


@dataclass
class FaultedThenRerun:
    """The tiny workflow run twice on the cluster: once with an injected failure, once more."""

    workdir: Path
    config: dict
    marker: Path
    first: WorkflowRun
    second: WorkflowRun
    mtimes_after_first: dict[Path, float]


@pytest.fixture(scope="module")
def faulted_then_rerun(
    slurm_cluster: SlurmCluster, tmp_path_factory: pytest.TempPathFactory
) -> FaultedThenRerun:
    workdir = tmp_path_factory.mktemp("slurm-workflow")
    marker = workdir / "fail-once.marker"
    env = dict(slurm_cluster.env)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # cnnpar
    # A `cnnpar` shim first on PATH fails the first tinycnn training (creating the marker) and
    # runs the real cnnpar otherwise; jobs inherit PATH through sbatch --export=ALL.
    env["PATH"] = fail_once_shim(workdir.parent / f"{workdir.name}-shim", marker, env["PATH"])
    first = run_workflow(workdir, env)
    mtimes = {p: p.stat().st_mtime for p in (workdir / "results").rglob("*") if p.is_file()}
    second = run_workflow(workdir, env)
    config = {**load_config(TINY), "blocks": BLOCKS}
    return FaultedThenRerun(workdir, config, marker, first, second, mtimes)


def test_failed_job_is_reported_with_its_slurm_log(
    slurm_cluster: SlurmCluster, faulted_then_rerun: FaultedThenRerun
) -> None:
    run = faulted_then_rerun.first
    assert run.returncode != 0, run.output[-3000:]
    assert faulted_then_rerun.marker.exists(), (
        f"the fault was never injected:\n{run.output[-4000:]}"
    )
    assert "Error in rule train_family" in run.output, run.output[-3000:]
    failed = [
        s for s in run.submissions if slurm_cluster.job_fields(s.slurm_id)["JobState"] == "FAILED"
    ]
    # Exactly one job failed: the training family job whose first run failed. Its SLURM log
    # (kept because it failed) is named in the error, and show-failed-logs prints the job's own
    # log, where the shim wrote why it failed.
    assert [s.rule for s in failed] == ["train_family"], [str(s.log) for s in failed]
    error_block = run.output[run.output.index("Error in rule train_family") :]
    assert str(failed[0].log) in error_block
    assert failed[0].log.exists()
    assert SHIM_MESSAGE in error_block, error_block[-3000:]


def test_rerun_completes_without_redoing_finished_jobs(
    slurm_cluster: SlurmCluster,
    faulted_then_rerun: FaultedThenRerun,
) -> None:
    run = faulted_then_rerun.second
    assert run.returncode == 0, run.output[-3000:]
    # Only the failed family job and the untimed aggregation ran again: no job that finished
    # in the first run was submitted a second time.
    first = faulted_then_rerun.first.submissions
    failed = [s.job for s in first if slurm_cluster.job_fields(s.slurm_id)["JobState"] == "FAILED"]
    finished = {s.job for s in first} - set(failed)
    again = [s.job for s in run.submissions]
    assert len(failed) == 1 and failed[0] in again, (failed, again)
    assert finished.isdisjoint(again), sorted(finished & set(again))
    assert len(again) == len(set(again)), again
    # A family job fails and runs again as a whole: its comparison family in its block (so its
    # ratios stay pairs of runs made together). Nothing else was written again.
    redone = [
        str(path)
        for path, mtime in faulted_then_rerun.mtimes_after_first.items()
        if "/logs/" not in str(path) and path.stat().st_mtime != mtime
    ]
    family = re.compile(r"/train/tinycnn/(?:.*/)?block~1(?:/|\.tsv$)")
    assert all(family.search(path) for path in redone), redone


def test_every_job_ran_through_slurm(
    slurm_cluster: SlurmCluster, faulted_then_rerun: FaultedThenRerun
) -> None:
    runs = (faulted_then_rerun.first, faulted_then_rerun.second)
    submissions = [s for run in runs for s in run.submissions]
    per_rule = Counter(s.rule for s in submissions)
    expected = Counter(
        {rule: n for rule, n in expected_jobs(faulted_then_rerun.config).items() if n}
    )
    for rule in LOCAL_RULES:  # run by Snakemake itself, not submitted
        del expected[rule]
    expected["train_family"] += 1  # the injected failure's job, submitted again by the re-run
    assert per_rule == expected
    # SLURM's own record of each job: where and how it ran, and how it ended.
    states = []
    for submission in submissions:
        fields = slurm_cluster.job_fields(submission.slurm_id)
        assert fields["Partition"] == slurm_cluster.partition
        assert Path(fields["WorkDir"]) == faulted_then_rerun.workdir
        states.append(fields["JobState"])
    assert sorted(states) == ["COMPLETED"] * (len(states) - 1) + ["FAILED"], states


def test_outputs_and_tables_are_complete(faulted_then_rerun: FaultedThenRerun) -> None:
    results = faulted_then_rerun.workdir / "results"
    config = faulted_then_rerun.config
    expected = expected_jobs(config)
    for name in ("report.html", "tables/train.csv", "tables/classify.csv", "tables/summary.csv"):
        assert (results / name).stat().st_size > 0, name
    for stem in [*FIGURE_STEMS, "mask"]:
        assert (results / "figures" / f"{stem}.png").stat().st_size > 0, stem

    train = pd.read_csv(results / "tables" / "train.csv")
    tiny_epochs = config["train"]["tinycnn"]["epochs"]
    mosaic_epochs = config["train"]["mosaicnet"]["epochs"]
    assert len(train[train["model"] == "mosaicnet"]) == expected["train_mosaicnet"] * mosaic_epochs
    tinycnn = train[train["model"] == "tinycnn"]
    runs = paired_train_runs(config) + expected["train_tinycnn_full"]
    assert tinycnn["job_dir"].nunique() == runs
    full = tinycnn[tinycnn["run"] == "full"]
    assert (full.groupby("job_dir").size() == tiny_epochs).all()
    # Throughput jobs train until their time budget, however many epochs that takes.
    paired = tinycnn[tinycnn["run"] == "paired"].groupby("job_dir")["seconds"].sum()
    assert (paired >= config["train"]["tinycnn"]["time_budget"]).all()

    classify = pd.read_csv(results / "tables" / "classify.csv")
    classify = classify[classify["run"] == "paired"]
    assert classify["job_dir"].nunique() == paired_classify_runs(config)
    assert classify.groupby("job_dir").size().between(1, config["classify"]["repeats"]).all()


TIMED_RULES = (
    "train_family", "classify_family", "train_tinycnn_full", "classify_full", "train_mosaicnet",
)  # fmt: skip


def test_timed_jobs_queue_together_but_run_alone(
    slurm_cluster: SlurmCluster, faulted_then_rerun: FaultedThenRerun
) -> None:
    """The profile scopes the local `bench=1` cap to inside each job, so Snakemake queues timed
    jobs together, and `--exclusive` makes SLURM run each alone on the node."""
    timed = [s for s in faulted_then_rerun.first.submissions if s.rule in TIMED_RULES]
    jobs = [slurm_cluster.job_fields(s.slurm_id) for s in timed]
    assert all(job["OverSubscribe"] == "NO" for job in jobs), [j["OverSubscribe"] for j in jobs]
    # scontrol times have 1 s resolution: a job may start in the second the previous ended.
    jobs.sort(key=lambda job: (job["StartTime"], job["EndTime"]))
    for before, after in itertools.pairwise(jobs):
        assert after["StartTime"] >= before["EndTime"], (before["JobId"], after["JobId"])
    queued_while_another_ran = [
        job
        for job in jobs
        if any(
            other is not job and job["SubmitTime"] < other["EndTime"] <= job["StartTime"]
            for other in jobs
        )
    ]
    assert queued_while_another_ran, "timed jobs were submitted one at a time"


# Which wildcards hold the rank count and the job's cores (threads or workers), in the order the
# plugin joins them into the job comment "rule_<rule>_wildcards_<w1>_<w2>_...": each rank is a
# task of cores / ranks CPUs. train_mosaicnet's count is in the config; a family job reserves
# its widest member's (below).
THREADS_WILDCARD = {"train_tinycnn_full": (1, 2)}


def test_each_timed_job_reserves_the_cores_it_measures(
    slurm_cluster: SlurmCluster, faulted_then_rerun: FaultedThenRerun
) -> None:
    runs = (faulted_then_rerun.first, faulted_then_rerun.second)
    timed = [s for run in runs for s in run.submissions if s.rule in TIMED_RULES]
    config = faulted_then_rerun.config
    for submission in timed:
        fields = slurm_cluster.job_fields(submission.slurm_id)
        if submission.rule == "train_mosaicnet":
            threads = config["train"]["mosaicnet"]["threads"]
        elif submission.rule == "train_family":  # its runs go one after another: the widest
            threads = max(config["train"]["tinycnn"]["threads"])
        elif submission.rule == "classify_family":
            threads = max(config["classify"]["workers"])
        elif submission.rule == "classify_full":  # mode threads at the widest count, or 1
            cls = config["classify"]
            threads = max(cls["workers"]) if "threads" in cls["modes"] else 1
        else:
            wildcards = fields["Comment"].split("_wildcards_", 1)[1].split("_")
            ranks, cores = THREADS_WILDCARD[submission.rule]
            threads = int(wildcards[cores]) // int(wildcards[ranks])
        assert fields["CPUs/Task"] == str(threads), (submission, fields["Comment"])


def test_gpu_engines_request_a_gpu(tmp_path: Path) -> None:
    """The profile's gpu expressions, evaluated per job by a dry run (no GPU needed: numba's
    CUDA simulator makes the cuda engine available, so its jobs enter the DAG)."""
    extra = tmp_path / "gpu.yaml"
    extra.write_text("train:\n  tinycnn:\n    engines: [numpy, cuda]\n")
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "--dry-run",
            f"--snakefile={SNAKEFILE}",
            f"--directory={tmp_path}",
            f"--profile={PROFILE}",
            "--configfile",  # the extra file is merged over the tiny config
            str(TINY),
            str(extra),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # "rule train_gpu:" ... "wildcards: engine=cuda, ..." ... "resources: ..., gpu=1, ..."
    jobs = re.findall(
        r"^( *)rule (\w+):\n(?:\1    .*\n)*?\1    wildcards: (.*)\n(?:\1    .*\n)*?"
        r"\1    resources: (.*)\n",
        result.stdout,
        re.M,
    )
    gpu = {
        (rule, wildcards.split(",")[0]): re.search(r"\bgpu=(\d+)", resources).group(1)
        for _, rule, wildcards, resources in jobs
        if rule in ("train_gpu", "train_family", "classify_family")
    }
    assert gpu[("train_gpu", "engine=cuda")] == "1", gpu  # the cuda engine's own jobs
    assert {value for (rule, _), value in gpu.items() if rule != "train_gpu"} == {"0"}, gpu
    assert any(rule == "train_family" for rule, _ in gpu), gpu  # numpy's family jobs


# --- ranked jobs: each one SLURM job whose ranks are its srun tasks ---------------------------

RANKS_TIMEOUT_S = 540
# torch at 2 threads (1 rank) beside torch-ddp at 2 ranks x 1 thread; sequential beside ranks
RANKS_OVERRIDE = {
    "blocks": 1,
    "train": {"tinycnn": {"engines": ["torch", "torch-ddp"], "threads": [2], "ranks": [2],
                          "epochs": 1, "shuffle": False}},
    "classify": {"modes": ["sequential", "ranks"], "workers": [2], "ranks": [2],
                 "grids": ["10x10"], "repeats": 1},
}  # fmt: skip
RANKS_TINYCNN = (
    "results/train/tinycnn/engine~{engine}/ranks~{ranks}/threads~2/filters~4/batch~32/seed~0"
)
RANKS_CLASSIFY = (
    "results/classify/mode~{mode}/ranks~{ranks}/workers~{workers}/grid~10x10/batch~64/seed~0"
)


@pytest.fixture(scope="module")
def ranked_run(
    slurm_cluster: SlurmCluster, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, str]:
    workdir = tmp_path_factory.mktemp("slurm-ranks")
    config = workdir / "ranks.yaml"
    config.write_text(yaml.safe_dump(RANKS_OVERRIDE))
    targets = [
        f"{RANKS_TINYCNN.format(engine='torch', ranks=1)}/full/weights_final.npz",
        f"{RANKS_TINYCNN.format(engine='torch-ddp', ranks=2)}/full/weights_final.npz",
        f"{RANKS_CLASSIFY.format(mode='sequential', ranks=1, workers=1)}/block~1/predictions.npz",
        f"{RANKS_CLASSIFY.format(mode='ranks', ranks=2, workers=2)}/block~1/predictions.npz",
    ]
    env = dict(slurm_cluster.env)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # cnnpar
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", f"--snakefile={SNAKEFILE}", f"--directory={workdir}",
         f"--profile={PROFILE}", "--configfile", str(TINY), str(config), *CLUSTER_FLAGS,
         *targets],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=RANKS_TIMEOUT_S, check=False,
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
    ddp_dir = f"{RANKS_TINYCNN.format(engine='torch-ddp', ranks=2)}/full"
    record = json.loads((workdir / ddp_dir / "run.json").read_text())
    ranks = _ranks_of(record)
    assert record["parallelism"] == {**record["parallelism"], "requested": 2, "processes": 2}
    assert "srun --kill-on-bad-exit=1 --cpus-per-task=1 -n 2 cnnpar train" in output
    slurm_ids = {r["slurm_job_id"] for r in ranks}
    assert slurm_ids <= set(submitted_ids(output)), (slurm_ids, output[-2000:])
    one = np.load(
        workdir / RANKS_TINYCNN.format(engine="torch", ranks=1) / "full/weights_final.npz"
    )
    two = np.load(workdir / ddp_dir / "weights_final.npz")
    assert sorted(one.files) == sorted(two.files)
    for key in one.files:  # float32 sums in another order: the engines' equivalence tolerance
        np.testing.assert_allclose(two[key], one[key], rtol=1e-4, atol=1e-5, err_msg=key)


def test_ranks_mode_ranks_are_tasks_of_one_job_and_predict_as_sequential(ranked_run) -> None:
    workdir, output = ranked_run
    ranks_dir = f"{RANKS_CLASSIFY.format(mode='ranks', ranks=2, workers=2)}/block~1"
    record = json.loads((workdir / ranks_dir / "run.json").read_text())
    ranks = _ranks_of(record)
    assert [r["cells"] for r in ranks] == [64, 36]  # 100 cells in batches of 64
    assert "srun --kill-on-bad-exit=1 --cpus-per-task=1 -n 2 cnnpar classify" in output
    assert {r["slurm_job_id"] for r in ranks} <= set(submitted_ids(output))
    seq = f"{RANKS_CLASSIFY.format(mode='sequential', ranks=1, workers=1)}/block~1"
    expected = np.load(workdir / seq / "predictions.npz")
    got = np.load(workdir / ranks_dir / "predictions.npz")
    assert np.array_equal(got["pred"], expected["pred"])
    assert np.array_equal(got["index"], expected["index"])


def submitted_ids(output: str) -> list[str]:
    """The SLURM job ids Snakemake submitted."""
    return [i for i, _ in SUBMITTED.findall(output)]
