"""What users' environments do to cnnpar: site settings, config files, read-only installs and
the limits a job runs under.

Each case runs `cnnpar` as a user would, in a subprocess with the environment or working
directory a cluster module, a container or the original projects give it. Every promise holds:
bad input is one line and exit 2 with no traceback, a setting that changes what runs is warned
about, recorded and flagged, and every limit is read where it applies.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from mounts import tmpfs

from cnnpar import limits
from cnnpar.measure import numba_settings
from cnnpar.record import Parallelism, RunRecord
from cnnpar.study.report import not_as_named_html

SRC = Path(__file__).resolve().parents[1] / "src"
TINY = ["--filters=1", "--batch-size=8", "--train-size=8", "--test-size=4", "--epochs=1"]
TBB_MISSING = (
    "NUMBA_THREADING_LAYER=tbb cannot be loaded (TBB not installed): unset it or install tbb"
)


def _tbb_installed() -> bool:
    try:
        importlib.import_module("numba.np.ufunc.tbbpool")
    except ImportError:
        return False
    return True


def _env(src: Path = SRC, drop: tuple[str, ...] = (), **extra: str) -> dict[str, str]:
    """This environment without numba's and OpenMP's settings (so the case decides them), the
    cnnpar under test first on PYTHONPATH."""
    keep = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("NUMBA_", "OMP_PROC_BIND", "OMP_PLACES", "SLURM_")) and k not in drop
    }
    pythonpath = os.pathsep.join(filter(None, [str(src), os.environ.get("PYTHONPATH")]))
    return {**keep, "PYTHONPATH": pythonpath, **extra}


def _cnnpar(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 240
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cnnpar", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env if env is not None else _env(),
        timeout=timeout,
    )


def _lines(stderr: str) -> tuple[list[str], list[str]]:
    """(warning lines, other lines) of stderr; never a traceback."""
    assert "Traceback" not in stderr, stderr
    lines = stderr.splitlines()
    warnings = [line for line in lines if line.startswith("cnnpar: warning:")]
    return warnings, [line for line in lines if line not in warnings]


def _train(cwd: Path, *args: str, env: dict[str, str] | None = None):
    out = cwd / "run"
    done = _cnnpar("train", *TINY, *args, f"--out={out}", f"--timing-lock={cwd / 'lock'}",
                   cwd=cwd, env=env)  # fmt: skip
    return done, out


# --- a site setting that cannot work: one line, exit 2; torch-only commands never mind ----------


@pytest.fixture(scope="module")
def no_tbb() -> None:
    if _tbb_installed():
        pytest.skip("TBB is installed here: NUMBA_THREADING_LAYER=tbb loads")


def test_info_under_a_threading_layer_that_cannot_load(no_tbb, tmp_path: Path) -> None:
    done = _cnnpar(
        "info", "--json", "--no-sgemm", cwd=tmp_path, env=_env(NUMBA_THREADING_LAYER="tbb")
    )
    assert done.returncode == 2
    _, errors = _lines(done.stderr)
    assert errors == [f"cnnpar info: error: {TBB_MISSING}"]
    # the record still shows everything else, and what numba was asked for
    record = json.loads(done.stdout)
    assert record["numba_settings"]["threading_layer_setting"] == "tbb"
    assert record["numba_settings"]["threading_layer"] is None
    assert record["numba_settings"]["set_by"] == {"NUMBA_THREADING_LAYER": "environment"}


@pytest.mark.slow  # seconds: spawns processes or trains
def test_numba_training_under_it_is_refused_and_torch_runs(no_tbb, tmp_path: Path) -> None:
    env = _env(NUMBA_THREADING_LAYER="tbb")
    done, out = _train(tmp_path, "--engine=numba", env=env)
    assert done.returncode == 2
    _, errors = _lines(done.stderr)
    assert errors == [f"cnnpar train: error: engine 'numba' cannot run: {TBB_MISSING}"]
    assert not out.exists()
    # torch never touches numba's threading layer, and its record says numba's never started
    done, out = _train(tmp_path, "--engine=torch", env=env)
    assert done.returncode == 0, done.stderr
    record = RunRecord.read(out / "run.json")
    assert record.environment["numba_settings"]["threading_layer"] is None
    assert record.parallelism.threads["numba_threads"] is None
    engines = json.loads(_cnnpar("engines", "--json", cwd=tmp_path, env=env).stdout)
    assert engines["numba"] == f"engine 'numba' cannot run: {TBB_MISSING}"
    assert engines["numpy"] == engines["torch"] == "available"


@pytest.mark.slow  # spawns worker processes
def test_classify_does_not_touch_numbas_threading_layer(
    no_tbb, weights: Path, tmp_path: Path
) -> None:
    out = tmp_path / "c"
    done = _cnnpar(
        "classify", f"--weights={weights}", "--rows=2", "--cols=2", "--mode=processes",
        "--workers=2", f"--out={out}", f"--timing-lock={tmp_path / 'lock'}",
        cwd=tmp_path, env=_env(NUMBA_THREADING_LAYER="tbb"),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    _lines(done.stderr)
    record = RunRecord.read(out / "run.json")
    assert record.environment["numba_settings"]["threading_layer_setting"] == "tbb"
    assert record.environment["numba_settings"]["threading_layer"] is None


@pytest.mark.slow  # seconds: spawns processes or trains
@pytest.mark.parametrize(
    ("setting", "line"),
    [
        (
            {"NUMBA_NUM_THREADS": "abc"},
            "NUMBA_NUM_THREADS='abc' is not a positive whole number; unset it or set a thread "
            "count (cnnpar sets the pool size from --threads)",
        ),
        (
            {"NUMBA_THREADING_LAYER": "fastest"},
            "NUMBA_THREADING_LAYER=fastest: numba knows no threading layer 'fastest'; unset it "
            "or use one of default, safe, threadsafe, forksafe, tbb, omp, workqueue",
        ),
    ],
    ids=["unparsable-thread-count", "unknown-layer"],
)
def test_other_numba_settings_that_cannot_work(setting, line, tmp_path: Path) -> None:
    done = _cnnpar("info", "--no-sgemm", cwd=tmp_path, env=_env(**setting))
    assert done.returncode == 2
    assert _lines(done.stderr)[1] == [f"cnnpar info: error: {line}"]
    done, out = _train(tmp_path, "--engine=numba", env=_env(**setting))
    assert done.returncode == 2 and not out.exists()
    assert _lines(done.stderr)[1] == [f"cnnpar train: error: engine 'numba' cannot run: {line}"]


def test_a_numba_config_file_numba_cannot_read(tmp_path: Path) -> None:
    (tmp_path / ".numba_config.yaml").write_text("enable_cudasim: [1\n")
    done, out = _train(tmp_path, "--engine=numba")
    assert done.returncode == 2 and not out.exists()
    (line,) = _lines(done.stderr)[1]
    assert line.startswith(
        f"cnnpar train: error: engine 'numba' cannot run: numba cannot read "
        f"{tmp_path / '.numba_config.yaml'} (ParserError: "
    )
    assert line.endswith("; fix or remove that file")


# --- a setting that changes what runs: named, recorded, flagged ------------------------------


@pytest.mark.slow  # the simulator runs every GPU thread in Python
def test_a_config_file_that_simulates_cuda(tmp_path: Path) -> None:
    config = tmp_path / ".numba_config.yaml"
    config.write_text("enable_cudasim: 1\n")  # as the second original project ships it
    how = f"in numba's CUDA simulator (enable_cudasim in {config}), not on a GPU"
    engines = json.loads(_cnnpar("engines", "--json", cwd=tmp_path).stdout)
    assert engines["cuda"] == f"available, but runs {how}"
    done, out = _train(tmp_path, "--engine=cuda")
    assert done.returncode == 0, done.stderr
    warnings, _ = _lines(done.stderr)
    assert (
        f"cnnpar: warning: engine cuda runs {how}; its timings do not measure the engine (the "
        "run record and the report say so)"
    ) in warnings
    record = RunRecord.read(out / "run.json")
    assert record.environment["numba_settings"]["cuda_simulator"] is True
    assert record.not_as_named() == [f"engine cuda ran {how}"]
    assert record.columns()["not_as_named"] == f"engine cuda ran {how}"


@pytest.mark.slow  # seconds: spawns processes or trains
def test_a_config_file_that_turns_the_jit_off(tmp_path: Path) -> None:
    config = tmp_path / ".numba_config.yaml"
    config.write_text("disable_jit: 1\n")
    how = f"with numba's JIT off (disable_jit in {config}): interpreted Python, not compiled code"
    engines = json.loads(_cnnpar("engines", "--json", cwd=tmp_path).stdout)
    assert engines["numba"] == f"available, but runs {how}"
    done, out = _train(tmp_path, "--engine=numba")
    assert done.returncode == 0, done.stderr
    assert any(how in w for w in _lines(done.stderr)[0])
    record = RunRecord.read(out / "run.json")
    settings = record.environment["numba_settings"]
    assert settings["jit"] is False and settings["cache"] == "off: the JIT is off"
    assert record.not_as_named() == [f"engine numba ran {how}"]


@pytest.mark.slow  # seconds: spawns processes or trains
@pytest.mark.parametrize(
    ("variable", "key", "value"),
    [("NUMBA_DISABLE_JIT", "jit", False), ("NUMBA_ENABLE_CUDASIM", "cuda_simulator", True)],
)
def test_the_same_settings_from_the_environment(variable, key, value, tmp_path: Path) -> None:
    done = _cnnpar("info", "--json", "--no-sgemm", cwd=tmp_path, env=_env(**{variable: "1"}))
    assert done.returncode == 0, done.stderr
    settings = json.loads(done.stdout)["numba_settings"]
    assert settings[key] is value
    assert settings["set_by"] == {variable: "environment"}
    engines = json.loads(
        _cnnpar("engines", "--json", cwd=tmp_path, env=_env(**{variable: "1"})).stdout
    )
    name = "numba" if variable == "NUMBA_DISABLE_JIT" else "cuda"
    assert engines[name].startswith("available, but runs ")
    assert f"({variable} in the environment)" in engines[name]


def test_info_states_numbas_effective_settings(tmp_path: Path) -> None:
    done = _cnnpar("info", "--json", "--no-sgemm", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    settings = record["numba_settings"]
    assert settings["threading_layer"] in ("tbb", "omp", "workqueue")
    assert settings["jit"] is True and settings["cuda_simulator"] is False
    assert settings["cache"].startswith("on") and settings["cache_dir"]
    assert record["threads"]["numba_threads"] == 1
    assert record["cpus_available"] >= 1 and record["cpus_at_start"] >= 1


def _record(engine: str, numba: dict | None, cpus: int = 2, at_start: int = 2, threads: int = 1):
    environment = {"cpus_available": cpus, "cpus_at_start": at_start}
    if numba is not None:
        environment["numba_settings"] = numba
    return RunRecord(
        command="train", model="tinycnn", params={"engine": engine},
        parallelism=Parallelism(requested=threads, effective=threads), results={}, outputs=[],
        environment=environment,
    )  # fmt: skip


def test_not_as_named_reads_the_record() -> None:
    simulated = {"cuda_simulator": True, "jit": True, "set_by": {}}
    assert _record("cuda", simulated).not_as_named() == [
        "engine cuda ran in numba's CUDA simulator, not on a GPU"
    ]
    assert _record("numba", simulated).not_as_named() == []  # the CPU engine is not simulated
    assert _record("numba", {"jit": False, "set_by": {}}).not_as_named() == [
        "engine numba ran with numba's JIT off: interpreted Python, not compiled code"
    ]
    assert _record("torch", {"jit": False, "cuda_simulator": True}).not_as_named() == []
    assert _record("cuda", None).not_as_named() == []  # recorded before the settings were
    assert _record("numba", None, cpus=1, at_start=2, threads=2).not_as_named() == [
        "its 2 threads ran on 1 CPU(s), not the 2 it started with (OMP_PROC_BIND or a library "
        "bound it)"
    ]


def test_the_report_flags_runs_not_as_named() -> None:
    train = pd.DataFrame(
        {
            "job_dir": ["results/a", "results/a", "results/b"],
            "not_as_named": ["engine cuda ran in numba's CUDA simulator", None, float("nan")],
        }
    )
    banner = not_as_named_html({"train": train, "classify": pd.DataFrame()})
    assert "1 run(s) did not run as named" in banner
    assert "results/a" in banner and "results/b" not in banner
    assert "CUDA simulator" in banner
    assert not_as_named_html({"train": train.iloc[2:], "classify": pd.DataFrame()}) == ""


# --- a read-only install and home: the cache moves or goes off, recorded ---------------------


def _read_only(path: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True)


@pytest.fixture
def read_only_site(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(src, home): a copy of cnnpar's source on a read-only file system, as a cluster module
    or a container installs it, and a read-only home."""
    install = tmp_path / "install"
    for _ in tmpfs(install, "size=64m"):
        subprocess.run(["cp", "-r", str(SRC), str(install)], check=True)
        for cache in (install / "src").rglob("__pycache__"):  # as installed: no caches
            subprocess.run(["rm", "-rf", str(cache)], check=True)
        _read_only(install)
        home = tmp_path / "home"
        for _ in tmpfs(home, "size=1m,ro"):
            yield install / "src", home


@pytest.mark.parametrize("given_cache_dir", [False, True], ids=["defaults", "NUMBA_CACHE_DIR"])
@pytest.mark.slow  # compiles the numba engine into an empty cache
def test_numba_training_from_a_read_only_install(
    read_only_site: tuple[Path, Path], given_cache_dir: bool, tmp_path: Path
) -> None:
    src, home = read_only_site
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    extra = {"NUMBA_CACHE_DIR": str(home / "numba")} if given_cache_dir else {}
    env = _env(src, drop=("XDG_CACHE_HOME",), HOME=str(home), TMPDIR=str(tmp), **extra)
    work = tmp_path / "work"
    work.mkdir()
    done, out = _train(work, "--engine=numba", env=env)
    assert done.returncode == 0, done.stderr
    _lines(done.stderr)
    settings = RunRecord.read(out / "run.json").environment["numba_settings"]
    why = (
        f"NUMBA_CACHE_DIR={home / 'numba'} is"
        if given_cache_dir
        else f"{src / 'cnnpar' / 'nets' / 'tinycnn'} and the user cache are"
    )
    assert settings["cache"] == f"on, in the temporary directory: {why} not writable"
    assert settings["cache_dir"].startswith(str(tmp / "cnnpar-numba-cache-"))


def test_no_writable_cache_anywhere_turns_caching_off(
    read_only_site: tuple[Path, Path], monkeypatch, capsys
) -> None:
    src, home = read_only_site
    source = src / "cnnpar" / "nets" / "tinycnn" / "numba_engine.py"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    monkeypatch.setattr(numba_settings.tempfile, "gettempdir", lambda: str(home))
    monkeypatch.setattr(numba_settings, "_cache_state", None)
    try:
        assert numba_settings.prepare_cache(source) is False
    finally:
        numba_settings.load().core.config.reload_config()
    assert "NUMBA_CACHE_DIR" not in os.environ
    assert numba_settings.settings().cache_dir is None
    assert numba_settings.settings().cache.startswith("off: no writable cache directory")
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("cnnpar: warning: numba cannot cache compiled code (")
    assert line.endswith("set NUMBA_CACHE_DIR to a writable directory")


# --- the limits a job runs under, read where they apply ----------------------------------------


def _affinity_after_torch(env: dict[str, str]) -> int:
    done = subprocess.run(
        [sys.executable, "-c", "import os, torch; print(len(os.sched_getaffinity(0)))"],
        capture_output=True, text=True, env=env, check=True,
    )  # fmt: skip
    return int(done.stdout)


@pytest.mark.slow  # seconds: spawns processes or trains
def test_cpus_are_read_after_torch_binds_the_process(tmp_path: Path) -> None:
    start = len(os.sched_getaffinity(0))
    if start < 2:
        pytest.skip("needs 2 CPUs to see one taken away")
    env = _env(OMP_PROC_BIND="close")
    after = _affinity_after_torch(env)
    done = _cnnpar("info", "--json", "--no-sgemm", cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    assert record["cpus_at_start"] == start
    assert record["cpus_available"] == after
    warnings, errors = _lines(done.stderr)
    assert errors == []
    if after < start:  # libgomp binds the main thread to one place
        assert warnings == [
            f"cnnpar: warning: this process may run on {after} CPU(s) since torch started, "
            f"{start} before: OMP_PROC_BIND=close bound it; unset OMP_PROC_BIND"
        ]


def test_memory_slurm_granted_is_the_limit(tmp_path: Path) -> None:
    env = _env(SLURM_MEM_PER_NODE="1")  # 1 MB: less than this process already holds
    done, out = _train(tmp_path, "--engine=numpy", env=env)
    assert done.returncode == 2 and not out.exists()
    (line,) = _lines(done.stderr)[1]
    assert line.startswith("cnnpar train: error: training --model tinycnn --filters 1")
    assert "available under SLURM's grant SLURM_MEM_PER_NODE=1 (1.0 MB); use a smaller" in line


def _fake_proc(tmp_path: Path, version: str, files: dict[str, str]) -> Path:
    """A /proc/self whose cgroup is `tmp_path/cg/job` with `files` in it."""
    proc = tmp_path / "proc"
    proc.mkdir()
    mount = tmp_path / "cg"
    (mount / "job").mkdir(parents=True)
    for name, text in files.items():
        (mount / "job" / name).write_text(text)
    if version == "v2":
        (proc / "cgroup").write_text("0::/job\n")
        (proc / "mountinfo").write_text(f"30 20 0:26 / {mount} rw - cgroup2 cgroup2 rw\n")
    else:
        (proc / "cgroup").write_text("4:memory:/job\n3:cpu,cpuacct:/job\n")
        (proc / "mountinfo").write_text(
            f"31 20 0:27 / {mount} rw - cgroup cgroup rw,memory,cpu,cpuacct\n"
        )
    return proc


@pytest.mark.parametrize("version", ["v2", "v1"])
def test_cgroup_limits_are_read(version: str, tmp_path: Path) -> None:
    files = (
        {"memory.max": str(2**30), "memory.current": str(2**28), "cpu.max": "150000 100000"}
        if version == "v2"
        else {
            "memory.limit_in_bytes": str(2**30),
            "memory.usage_in_bytes": str(2**28),
            "cpu.cfs_quota_us": "150000",
            "cpu.cfs_period_us": "100000",
        }
    )
    proc = _fake_proc(tmp_path, version, files)
    found = limits.memory_limits(proc)
    assert found[0][1] == "the host's available memory"
    free, label = found[1]
    assert free == 2**30 - 2**28
    assert label.startswith(f"cgroup {version} {tmp_path / 'cg' / 'job'}/memory.")
    assert limits.cpu_quota(proc) == 1.5


def test_unlimited_cgroups_are_no_limit(tmp_path: Path) -> None:
    proc = _fake_proc(tmp_path, "v2", {"memory.max": "max", "cpu.max": "max 100000"})
    assert len(limits.memory_limits(proc)) == 1
    assert limits.cpu_quota(proc) is None
