"""The Snakemake workflow: DAG size per config, lint, config errors, a real run, interrupts.

Every snakemake call runs in a tmp directory (`--directory`), so nothing is written into the
repository's results/ or .snakemake/.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
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

from cnnpar import registry
from cnnpar.study.config import unavailable_reason

# The workflow tier: every test here runs Snakemake (dry runs, lint, real runs of the tiny
# config); the unit tier (`-m "not slow and not slurm and not gpu"`) leaves them out.
pytestmark = pytest.mark.slow


def snakemake(
    workdir: Path, *args: str, timeout: float = 120, **popen: object
) -> subprocess.CompletedProcess[str]:
    """Run snakemake on the repo's Snakefile inside `workdir`, with this venv on PATH."""
    return subprocess.run(
        snakemake_cmd(workdir, *args),
        cwd=workdir,
        env=venv_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        **popen,
    )


def snakemake_cmd(workdir: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "-d", str(workdir), *args]


def venv_env() -> dict[str, str]:
    """The job shells call `cnnpar`: put this interpreter's bin directory first on PATH."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def job_stats(output: str) -> dict[str, int]:
    """The 'Job stats' table of a (dry) run: rule -> job count."""
    lines = output[output.index("Job stats:") :].splitlines()[3:]
    stats = {}
    for line in lines:
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            break
        stats[parts[0]] = int(parts[1])
    return stats


# --- dry runs, lint, config errors --------------------------------------------------------


@pytest.mark.parametrize("configfile", ["config/config.yaml", "config/full.yaml", TINY])
def test_dry_run_job_counts_match_the_config_grid(tmp_path: Path, configfile: str | Path):
    path = REPO / configfile
    result = snakemake(tmp_path, "-n", "--cores", "2", "--configfile", str(path))
    assert result.returncode == 0, result.stderr[-3000:]
    stats = job_stats(result.stdout + result.stderr)
    expected = expected_jobs(load_config(path))
    assert stats == {**expected, "total": sum(expected.values())}


def test_full_config_is_a_real_sweep():
    """The full study really sweeps: several threads, widths, grids and seeds."""
    config = load_config(REPO / "config/full.yaml")
    tiny, cls = config["train"]["tinycnn"], config["classify"]
    assert len(tiny["threads"]) >= 3 and len(tiny["filters"]) >= 2 and len(tiny["seeds"]) >= 2
    assert {"200x300", "1000x1000"} <= set(cls["grids"])
    assert set(tiny["engines"]) == set(registry.engines_for("tinycnn"))  # every engine
    assert "ranks" in cls["modes"] and len(tiny["ranks"]) >= 2


def test_unavailable_engines_are_skipped_with_a_warning_or_fail_when_strict(tmp_path: Path):
    if unavailable_reason("torch-cuda", "train engine") is None:
        pytest.skip("a GPU is present: nothing is unavailable")
    cfg = tmp_path / "gpu.yaml"
    cfg.write_text(yaml.safe_dump({"train": {"tinycnn": {"engines": ["numpy", "torch-cuda"]}}}))
    result = snakemake(tmp_path, "-n", "--cores", "2", "--configfile", str(cfg))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "skipping train engine 'torch-cuda'" in result.stdout + result.stderr
    stats = job_stats(result.stdout + result.stderr)
    assert stats["train_family"] == 3 and "train_gpu" not in stats  # numpy, 3 blocks

    cfg.write_text(
        yaml.safe_dump({"strict": True, "train": {"tinycnn": {"engines": ["numpy", "torch-cuda"]}}})
    )
    strict = snakemake(tmp_path, "-n", "--configfile", str(cfg))
    assert strict.returncode != 0
    assert "train engine 'torch-cuda' is not available" in strict.stdout + strict.stderr


def test_lint_is_clean(tmp_path: Path):
    result = snakemake(tmp_path, "--lint", "--configfile", str(REPO / "config/config.yaml"))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    # Lints are printed as "Lints for snakefile ...:" (the exit code stays 0).
    assert "Lints for" not in output, output[-3000:]


@pytest.mark.parametrize(
    ("override", "named"),
    [
        (
            {"train": {"tinycnn": {"engines": ["numpy", "tpu"]}}},
            "'train.tinycnn.engines[1]': 'tpu'",
        ),
        ({"train": {"tinycnn": {"threads": [0, 2]}}}, "'train.tinycnn.threads[0]': 0 is too small"),
        ({"classify": {"grids": ["0x5"]}}, "'classify.grids[0]': '0x5' is invalid"),
        ({"classify": {"grid": ["10x10"]}}, "unknown config key 'grid' in 'classify'"),
        ({"classify": {"modes": ["gpu"]}}, "'classify.modes[0]': 'gpu' is not allowed"),
    ],
)
def test_bad_configs_fail_at_start_up_naming_the_key(tmp_path: Path, override: dict, named: str):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump(override))
    result = snakemake(tmp_path, "-n", "--configfile", str(cfg), timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert named in output, output[-2000:]
    assert "allowed" in output or "must be" in output or "ROWSxCOLS" in output
    assert not (tmp_path / "results").exists()  # nothing ran


def test_dry_run_lays_ranked_jobs_out_over_their_cores(tmp_path: Path):
    """torch-ddp and mode ranks split each core count over every rank count dividing it; a
    rank count that divides none is skipped with a warning."""
    cfg = tmp_path / "ranks.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "blocks": 1,
                "train": {"tinycnn": {"engines": ["torch", "torch-ddp"], "threads": [1, 2, 4],
                                      "ranks": [2, 4]}},
                "classify": {"modes": ["processes", "ranks"], "workers": [2], "ranks": [3],
                             "grids": ["10x10"]},
            }
        )
    )  # fmt: skip
    result = snakemake(tmp_path, "-n", "-p", "--cores", "4", "--configfile", str(cfg))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    train = set(re.findall(r"cnnpar train --model tinycnn --engine (\S+) --ranks (\d+) "
                           r"--threads ([\d,]+)", output))  # fmt: skip
    # torch switches threads in one process: one job per block trains 1, 2 and 4 threads in
    # turn; its full-length run uses the largest count.
    assert train == {
        ("torch", "1", "1,2,4"), ("torch", "1", "4"),
        ("torch-ddp", "2", "1"), ("torch-ddp", "2", "2"), ("torch-ddp", "4", "1"),
    }  # fmt: skip
    assert "engine~torch-ddp/ranks~4/threads~4/" in output  # the path names the job's cores
    assert "skipping classify mode 'ranks': no rank count in [3] divides" in output
    assert "--mode ranks" not in output and "--mode processes --workers 2" in output


def test_data_mirror_reaches_every_job_that_reads_data(tmp_path: Path):
    cfg = tmp_path / "mirror.yaml"
    mirrors = ["https://mirror.example.org/mnist/", "file:///srv/my mnist/"]
    cfg.write_text(yaml.safe_dump({"data": {"source": "download", "mirror": mirrors}}))
    result = snakemake(
        tmp_path, "-n", "-p", "--configfile", str(TINY), str(cfg), "--cores", "2", timeout=60
    )
    assert result.returncode == 0, result.stderr[-3000:]
    commands = [line for line in result.stdout.splitlines() if " cnnpar " in f" {line}"]
    reading = [c for c in commands if re.search(r"cnnpar (data verify|train|classify) ", c)]
    assert reading and len(reading) == len(commands)
    options = "--data-source download --mirror https://mirror.example.org/mnist/ --mirror "
    options += "'file:///srv/my mnist/'"
    for command in reading:
        assert options in command, command


# --- config paths, the thread cap, a re-run from another shell -------------------------------


CAPPED = (
    "cannot run this sweep: train.tinycnn.threads, classify.workers and train.mosaicnet.threads "
    "ask for 2 threads per job but {} caps every job at 1"
)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--cores", "1"], CAPPED.format("--cores 1")),
        (["--cores", "2", "--max-threads", "1"], CAPPED.format("--max-threads 1")),
        (["--cores", "2", "--set-threads", "train_family=1"], "--set-threads train_family=1 "),
    ],
)
def test_a_sweep_snakemake_would_cap_is_refused_before_any_job(
    tmp_path: Path, flags: list[str], message: str
):
    """Snakemake silently lowers {threads} to its cap: the 2-thread and 2-worker jobs would run
    as 1-thread ones and collide with those in the tables, after every job had run."""
    result = snakemake(tmp_path, *flags, "--configfile", str(TINY))
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert message in output, output[-2000:]
    assert not list((tmp_path / "results").rglob("*"))  # no job ran


def mnist_dir(where: Path) -> Path:
    """A directory of the four MNIST IDX files (the package's own gzipped copies)."""
    shutil.copytree(REPO / "src/cnnpar/data", where, ignore=shutil.ignore_patterns("*.py"))
    return where


def test_jobs_get_every_config_path_resolved_and_no_lock_of_the_shell(tmp_path: Path):
    """Jobs run in shadow directories: relative config paths reach them absolute, against the
    directory Snakemake runs in; a null timing.lock reaches them as no --timing-lock at all
    (each cnnpar works its default out where it runs)."""
    mnist_dir(tmp_path / "mnist_raw")
    (tmp_path / "locks").mkdir()
    cfg = tmp_path / "paths.yaml"
    plans = {}
    for lock in ("locks/timing.lock", None):
        data = {"source": "dir", "dir": "mnist_raw"}
        cfg.write_text(yaml.safe_dump({"data": data, "timing": {"lock": lock}}))
        plan = snakemake(tmp_path, "-n", "-p", "--cores", "2", "--configfile", str(TINY), str(cfg))
        assert plan.returncode == 0, plan.stderr[-2000:]
        plans[lock] = re.findall(r"^Shell command: (.*\bcnnpar (?:train|classify|data) .*)$",
                                 plan.stdout, re.M)  # fmt: skip
    commands = plans["locks/timing.lock"]
    assert commands and all(f"--data-source {tmp_path}/mnist_raw " in c for c in commands)
    timed = [c for c in commands if " data verify " not in c]
    assert timed and all(f"--timing-lock {tmp_path}/locks/timing.lock " in c for c in timed)
    assert not any("--timing-lock" in c for c in plans[None]), plans[None][0]


def test_a_relative_data_dir_works_and_a_rerun_from_another_shell_keeps_finished_work(
    tmp_path: Path,
):
    """`data.dir: mnist_raw` and `results: ../out` run in shadowed jobs; a re-run from another
    directory (-d) with another TMPDIR, as from a new login on a cluster, plans nothing."""
    work = tmp_path / "work"
    mnist_dir(work / "mnist_raw")
    cfg = work / "paths.yaml"
    cfg.write_text(yaml.safe_dump({"data": {"source": "dir", "dir": "mnist_raw"},
                                   "results": "../out"}))  # fmt: skip
    target = tmp_path / "out/train/mosaicnet/seed~0/model.pt"
    args = [str(target), "--cores", "2", "--configfile", str(TINY), str(cfg)]
    env = venv_env()
    runs = []
    for name, cwd, extra in (("tmp-a", work, []), ("tmp-b", tmp_path, ["-n"])):
        (tmp_path / name).mkdir()
        env["TMPDIR"] = str(tmp_path / name)
        runs.append(subprocess.run(snakemake_cmd(work, *extra, *args), cwd=cwd, env=env,
                                   capture_output=True, text=True, timeout=300))  # fmt: skip
    first, again = runs
    assert first.returncode == 0, (first.stdout + first.stderr)[-3000:]
    assert target.is_file() and (tmp_path / "out/data/verify.txt").is_file()
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Nothing to be done" in again.stdout + again.stderr, again.stdout[-3000:]


def test_a_bad_compare_with_set_fails_at_start_up(tmp_path: Path):
    not_a_set = tmp_path / "elsewhere"
    not_a_set.mkdir()
    for value, named in ((str(not_a_set), "not a result set"), ("results", "own results")):
        cfg = tmp_path / "bad.yaml"
        cfg.write_text(yaml.safe_dump({"compare_with": [value]}))
        result = snakemake(tmp_path, "-n", "--configfile", str(cfg), timeout=60)
        output = result.stdout + result.stderr
        assert result.returncode != 0
        assert "config key 'compare_with[0]'" in output and named in output, output[-2000:]
        assert "Traceback" not in output


# --- a real run, interrupted twice ----------------------------------------------------------


def _outputs(results: Path) -> dict[Path, float]:
    """Every finished job output (not logs or benchmarks) with its modification time."""
    files = {}
    for path in results.rglob("*"):
        if path.is_file() and not {"logs", "benchmarks"} & set(path.relative_to(results).parts):
            files[path] = path.stat().st_mtime_ns
    return files


def _wait_for(predicate, timeout: float, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"snakemake ended (rc {proc.returncode}) before the interrupt")
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting to interrupt snakemake")
        time.sleep(0.2)


def _start(workdir: Path) -> subprocess.Popen:
    return subprocess.Popen(
        snakemake_cmd(workdir, "--cores", "2", "--configfile", str(TINY)),
        cwd=workdir,
        env=venv_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group, so the kill reaches every job
    )


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The tiny config run to completion after two interrupts mid-job:
    1. SIGKILL to snakemake's whole process group once the first training job finished
       (a crash: the lock stays behind and `--unlock` is needed),
    2. SIGTERM to snakemake alone once the re-run finished a job (a polite stop: running
       jobs finish, nothing new starts, the lock is released),
    3. a plain re-run to the end."""
    workdir = tmp_path_factory.mktemp("tiny_run")
    results = workdir / "results"
    start = time.monotonic()

    proc = _start(workdir)
    _wait_for(lambda: any(results.glob("train/tinycnn/**/block~*/metrics.csv")), 150, proc)
    time.sleep(1.0)  # let the next job start, so the kill lands mid-job
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    after_kill = _outputs(results)
    unlock = snakemake(workdir, "--unlock", "--configfile", str(TINY))
    assert unlock.returncode == 0, unlock.stderr[-2000:]

    # The last two runs share the machine with a busy loop on one of its CPUs from before the
    # first starts to after the second ends: every job they run has its whole timed region beside
    # the loop, so each must be flagged, and the report must say so. The polite stop below lets
    # running jobs finish, so the last run may find no timed job left; the one the second run
    # finishes before the stop is always there.
    cpu = min(os.sched_getaffinity(0))
    hog = subprocess.Popen(
        [sys.executable, "-c", f"import os\nos.sched_setaffinity(0, {{{cpu}}})\n"
         "print('spinning', flush=True)\nwhile True: pass"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert hog.stdout.readline().strip() == "spinning"
        busy_start = time.time()
        proc = _start(workdir)
        # Wait for a job of this run to finish: the scheduler (which handles SIGTERM) is running.
        _wait_for(lambda: len(_outputs(results)) > len(after_kill), 150, proc)
        time.sleep(1.0)
        after_term_start = _outputs(results)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)  # its running jobs finish first, beside the busy loop

        final_proc = subprocess.Popen(
            snakemake_cmd(workdir, "--cores", "2", "--configfile", str(TINY)),
            cwd=workdir, env=venv_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        stdout, stderr = final_proc.communicate(timeout=500)
    finally:
        hog.kill()
        hog.wait()
    busy_stop = time.time()
    final = subprocess.CompletedProcess(final_proc.args, final_proc.returncode, stdout, stderr)
    return {
        "busy": (busy_start, busy_stop),
        "workdir": workdir,
        "results": results,
        "after_kill": after_kill,
        "before_term": after_term_start,
        "final": final,
        "seconds": time.monotonic() - start,
    }


def test_interrupted_runs_resume_without_redoing_finished_jobs(tiny_run: dict):
    final = tiny_run["final"]
    assert final.returncode == 0, final.stderr[-4000:]
    results: Path = tiny_run["results"]
    for snapshot in ("after_kill", "before_term"):
        finished = tiny_run[snapshot]
        assert finished, f"no job had finished at the {snapshot} snapshot"
        for path, mtime in finished.items():
            assert path.stat().st_mtime_ns == mtime, f"{path} was redone after {snapshot}"
    # No half-written file anywhere: atomic writes leave no temp files, and shadow
    # directories of killed jobs are cleaned up.
    leftovers = [p for p in results.rglob("*") if ".tmp" in p.name]
    assert leftovers == []
    assert not list((tiny_run["workdir"] / ".snakemake/shadow").glob("*/*"))
    assert "report written to" in final.stdout + final.stderr


def test_tiny_run_tables_have_exactly_the_expected_rows(tiny_run: dict):
    config = load_config(TINY)
    jobs = expected_jobs(config)
    tables = tiny_run["results"] / "tables"
    train = pd.read_csv(tables / "train.csv")
    tiny_epochs = config["train"]["tinycnn"]["epochs"]
    mosaic_epochs = config["train"]["mosaicnet"]["epochs"]
    per_job = train.groupby("job_dir")["epoch"].count()
    paired_runs = paired_train_runs(config)
    assert len(per_job) == paired_runs + jobs["train_tinycnn_full"] + jobs["train_mosaicnet"]
    full = train[(train["run"] == "full") & (train["model"] == "tinycnn")]
    assert len(full) == jobs["train_tinycnn_full"] * tiny_epochs
    assert len(train[train["model"] == "mosaicnet"]) == jobs["train_mosaicnet"] * mosaic_epochs
    # Throughput jobs stop on their time budget, however many epochs that takes: the
    # config's epoch count is for the full-length runs.
    paired = train[train["run"] == "paired"].groupby("job_dir")
    assert len(paired) == paired_runs
    budget = config["train"]["tinycnn"]["time_budget"]
    assert (paired["seconds"].sum() >= budget).all()
    # The epoch bound a paired job is given is above the config's, so the budget stops it.
    assert (train.loc[train["run"] == "paired", "epochs"] > tiny_epochs).all()
    classify = pd.read_csv(tables / "classify.csv")
    full_classify = classify[classify["run"] == "full"]
    classify = classify[classify["run"] == "paired"]
    # A budgeted job times at most `repeats` passes, and at least one batch.
    per_job = classify.groupby("job_dir").size()
    assert len(per_job) == paired_classify_runs(config)
    assert per_job.between(1, config["classify"]["repeats"]).all()
    assert len(full_classify) == len(config["classify"]["grids"]) * len(config["classify"]["seeds"])
    assert set(classify["block"]) == set(range(1, config["blocks"] + 1))
    summary = pd.read_csv(tables / "summary.csv")
    assert (summary["blocks"] == config["blocks"]).all()
    # Requested and effective parallelism are both recorded, named the same in both tables.
    for frame in (train, classify):
        assert {"parallelism_requested", "parallelism"} <= set(frame.columns)
    assert summary["speedup"].notna().any()
    assert train["env.cpu_model"].notna().all()


def test_each_family_job_runs_its_members_in_the_planned_order(tmp_path: Path):
    """Inside a block, a family's runs are one job whose shell line runs them one after another
    (`&&`) in the config's order (engine by engine, mode by mode, parallelism ascending),
    reversed in even blocks: the order holds by construction, so it is read from the plan, not
    from finish times. An engine that switches threads is one command for all its counts."""
    cfg = tmp_path / "order.yaml"
    engines = {"engines": ["numpy", "numba", "torch"]}
    keys = {"blocks": 2, "classify": {"grids": ["10x10"]}, "train": {"tinycnn": engines}}
    cfg.write_text(yaml.safe_dump(keys))
    result = snakemake(tmp_path, "-n", "-p", "--cores", "2", "--configfile", str(TINY), str(cfg))
    assert result.returncode == 0, result.stderr[-3000:]
    config = load_config(TINY)
    modes = config["classify"]["modes"]
    lines = re.findall(r"^Shell command: (.*--block (\d+) .*)$", result.stdout, re.M)
    assert len(lines) == 4  # a training and a classification family in each of 2 blocks
    for line, block in lines:
        commands = line.split(" && ")
        assert all(c.startswith('bash "$CNNPAR_LOGGED" ') for c in commands)
        if " cnnpar train " in line:
            got = [re.search(r"--engine (\S+) --ranks \d+ --threads (\S+)", c).groups()
                   for c in commands]  # fmt: skip
            planned = [("numpy", "1"), ("numba", "1,2"), ("torch", "1,2")]
        else:
            got = [re.search(r"--mode (\S+) --workers (\d+)", c).groups() for c in commands]
            planned = [(m, "1" if m == "sequential" else "2") for m in modes]
        assert got == (planned if int(block) % 2 else planned[::-1]), (block, got)


def test_tiny_run_writes_every_figure_and_the_report(tiny_run: dict):
    results = tiny_run["results"]
    for stem in FIGURE_STEMS:
        for ext in ("png", "svg"):
            assert (results / f"figures/{stem}.{ext}").stat().st_size > 1000
    assert (results / "figures/mask.png").read_bytes()[:4] == b"\x89PNG"
    page = (results / "report.html").read_text()
    assert page.count('<img src="data:image/') == len(FIGURE_STEMS) + 1
    assert "numba 1 thread at" in page and 'id="method"' in page


def test_jobs_overlapping_a_busy_loop_are_flagged_and_the_report_says_so(tiny_run: dict):
    results = tiny_run["results"]
    jobs = pd.read_csv(results / "tables/jobs.csv")
    finished = pd.to_datetime(jobs["finished_utc"], utc=True).map(lambda t: t.timestamp())
    start, stop = tiny_run["busy"]
    # The jobs of the last two runs: the busy loop spun through their whole timed regions, and
    # the second run finished at least one before it was stopped.
    inside = jobs[(finished > start) & (finished < stop)]
    assert len(inside) >= 1, (start, stop, list(finished))
    assert inside["flagged"].all(), inside[["label", "others_cpu_share", "flag_reasons"]]
    page = (results / "report.html").read_text()
    assert 'id="interference"' in page and "Interference detected in" in page
    for label in inside["label"]:
        assert html.escape(label) in page
    # No finding states a direction its interval does not support.
    summary = pd.read_csv(results / "tables/summary.csv")
    for _, row in summary.iterrows():
        if row["speedup_verdict"] == "higher":
            assert row["speedup_low"] > 1
        elif row["speedup_verdict"] == "lower":
            assert row["speedup_high"] < 1
        elif row["speedup_verdict"] == "not resolved" and pd.notna(row["speedup_low"]):
            assert row["speedup_low"] <= 1 <= row["speedup_high"]
    from test_workflow_tables import findings_rows

    for row in findings_rows(page):
        if row["verdict"] in ("faster", "slower"):
            low, high = (float(v) for v in row["95% interval"].strip("[]").split(", "))
            assert (low > 1) if row["verdict"] == "faster" else (high < 1), row


@pytest.mark.parametrize(
    ("rule", "pattern", "dependents"),
    [
        ("train_family", "train/tinycnn/engine~numpy/*/*/*/*/*/block~1/metrics.csv", set()),
        ("train_family", "train/tinycnn/engine~numba/*/threads~2/*/*/*/block~1/run.json", set()),
        ("classify_family", "classify/*/*/*/*/*/*/block~2/result.csv", set()),
        # its weights
        ("train_mosaicnet", "train/mosaicnet/**/model.pt", {"classify_family", "classify_full"}),
    ],
)
def test_a_deleted_job_output_is_rebuilt_with_what_depends_on_it(
    tiny_run: dict, rule: str, pattern: str, dependents: set[str]
):
    """Snakemake does not rebuild a missing intermediate on its own: `rule all` names every
    job's outputs. Only the family job that wrote it is redone (its members stay paired in
    time), with what reads it; other blocks and families are not."""
    path = next(tiny_run["results"].glob(pattern))
    aside = path.with_name(path.name + ".aside")
    path.rename(aside)
    try:
        plan = snakemake(tiny_run["workdir"], "-n", "--cores", "2", "--configfile", str(TINY))
    finally:
        aside.rename(path)
    assert plan.returncode == 0, plan.stderr[-3000:]
    stats = job_stats(plan.stdout + plan.stderr)
    assert stats.pop(rule) == 1, stats
    downstream = {"mask_figure", "tables", "figures", "report", "all", "total"}
    assert set(stats) <= downstream | dependents, stats
    expected = expected_jobs(load_config(TINY))
    for dependent in dependents:  # every job of the rule, none twice
        assert stats[dependent] == expected[dependent], stats


def test_a_changed_record_reaches_the_report_in_one_invocation(tiny_run: dict):
    """A replaced run record re-runs the tables, figures and report, and nothing else, in the
    same invocation; `--forcerun tables` does the same."""
    workdir = tiny_run["workdir"]
    record = next(tiny_run["results"].glob("train/tinycnn/engine~numba/*/threads~2/*/*/*/"
                                           "block~1/run.json"))  # fmt: skip
    original = record.read_bytes()
    for flags in (("--forcerun", "tables"), ()):
        if not flags:
            record.write_bytes(original + b"\n")  # the same record, other bytes
        try:
            plan = snakemake(workdir, "-n", "--cores", "2", "--configfile", str(TINY), *flags)
        finally:
            if not flags:
                record.write_bytes(original)
        assert plan.returncode == 0, plan.stderr[-3000:]
        stats = job_stats(plan.stdout + plan.stderr)
        assert {"tables", "figures", "report", "all"} <= set(stats), (flags, stats)
        assert not set(stats) - {"tables", "figures", "report", "all", "total"}, (flags, stats)


def test_snakemake_report_renders(tiny_run: dict):
    out = tiny_run["results"] / "snakemake-report.html"
    result = snakemake(
        tiny_run["workdir"], "--configfile", str(TINY), "--report", str(out), timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    page = out.read_text()
    assert len(page) > 10_000
    # Every figure's caption is the registry's text (the report embeds them as JSON strings).
    entries = re.findall(
        r'"[^"]*/figures/(\w+)\.png": \{[^{}]*?"caption": ("(?:[^"\\]|\\.)*")', page
    )
    captions = {
        figure_id: " ".join(html.unescape(re.sub(r"<[^>]+>", "", json.loads(text))).split())
        for figure_id, text in entries
    }
    assert captions == {f.id: " ".join(f.caption.split()) for f in registry.FIGURES.values()}


def test_report_opens_in_chromium_with_every_figure_loaded(tiny_run: dict, tmp_path: Path):
    """Headless Chromium loads the report; a probe script records each image's naturalWidth."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        reason = "chromium is not installed (as root: apt-get install -y chromium)"
        if os.environ.get("CI") == "true":  # .ci/run installs it: a missing one is a failure
            pytest.fail(f"CI=true but {reason}")
        pytest.skip(reason)
    page = (tiny_run["results"] / "report.html").read_text()
    probe = (
        "<script>window.addEventListener('load', () => { document.body.dataset.widths = "
        "Array.from(document.images).map(i => i.naturalWidth).join(','); });</script>"
    )
    probed = tmp_path / "probed.html"
    probed.write_text(page.replace("</body>", f"{probe}</body>"))
    flags = [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000",
    ]  # fmt: skip
    dom = subprocess.run(
        [browser, *flags, "--dump-dom", probed.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    match = re.search(r'data-widths="([0-9,]*)"', dom)
    assert match, dom[-2000:]
    widths = [int(w) for w in match.group(1).split(",")]
    assert len(widths) == len(FIGURE_STEMS) + 1
    assert all(w > 0 for w in widths), widths
    shot = tmp_path / "report.png"
    subprocess.run(
        [browser, *flags, f"--screenshot={shot}", "--window-size=1400,3000",
         (tiny_run["results"] / "report.html").as_uri()],
        capture_output=True,
        timeout=120,
    )  # fmt: skip
    assert shot.stat().st_size > 50_000  # a rendered page, not a blank one


def test_fail_once_shim_fails_one_training_job_once(tmp_path: Path):
    """The SLURM test's fault injection (a `cnnpar` shim first on PATH): the first tinycnn job
    fails once, its log is shown, and the re-run succeeds."""
    marker = tmp_path / "failed-once"
    env = venv_env()
    env["PATH"] = fail_once_shim(tmp_path / "shim", marker, env["PATH"])
    target = (
        "results/train/tinycnn/engine~numpy/ranks~1/threads~1/filters~4/batch~32/seed~0/"
        "block~1/metrics.csv"
    )
    args = [target, "--cores", "2", "--configfile", str(TINY)]  # --configfile takes nargs
    first = subprocess.run(
        snakemake_cmd(tmp_path, *args), cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert first.returncode != 0
    assert marker.exists()
    # show-failed-logs (profiles/default, profiles/slurm) prints the job's log, where the shim
    # wrote its message.
    assert SHIM_MESSAGE in first.stdout + first.stderr
    second = subprocess.run(
        snakemake_cmd(tmp_path, *args), cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert second.returncode == 0, second.stderr[-3000:]
    assert (tmp_path / target).exists()
