"""numba's effective settings, read from the live process, and the checks that keep them honest.

numba reads its settings from `NUMBA_*` environment variables and from a `.numba_config.yaml` in
the working directory when it is first imported (and again before each compile). Either can
change what an engine is without a word: `enable_cudasim: 1` runs the cuda engine in a Python
simulator, `disable_jit: 1` turns the numba engine into interpreted Python, a threading layer
that cannot load ends the first parallel call in a traceback, and an install or home the user
cannot write leaves `cache=True` functions without a cache locator. This module is the one
place cnnpar imports numba first (`load`), so a setting numba cannot parse is one clear line,
and it reports what numba actually does (`settings`), never what the environment says.

One setting is cnnpar's own: LLVM's tuning for most AVX-512 CPUs prefers 256-bit vectors (wider
ones once cost clock speed), which leaves half of each vector unit idle in the numba engine's
SIMD loops (they measure about 18% faster with 512-bit vectors on a Sapphire Rapids Xeon). Where
the CPU has AVX-512 and nobody named numba's CPU target, `load` lets LLVM use 512-bit vectors;
NUMBA_CPU_NAME, NUMBA_CPU_FEATURES or NUMBA_ENABLE_AVX, in the environment or the config file,
win. `NumbaSettings.vectors` records which.
"""

from __future__ import annotations

import os
import sys
import tempfile
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from cnnpar.errors import CnnparError

CONFIG_FILE = ".numba_config.yaml"  # numba reads it from the working directory
# numba's threading layers and the purposes it accepts in NUMBA_THREADING_LAYER
THREADING_LAYERS = ("default", "safe", "threadsafe", "forksafe", "tbb", "omp", "workqueue")
# numba's settings that name its CPU target; given any of them, cnnpar leaves the target alone.
TARGET_SETTINGS = ("NUMBA_CPU_NAME", "NUMBA_CPU_FEATURES", "NUMBA_ENABLE_AVX")
WIDE_VECTORS = "-prefer-256-bit"  # LLVM's tuning flag that keeps vectors at 256 bits
# The feature string cnnpar gave numba, inherited by child processes so that they compile alike.
OWN_FEATURES = "CNNPAR_NUMBA_CPU_FEATURES"


class NumbaSettingError(CnnparError):
    """A numba setting (environment variable or .numba_config.yaml) that cannot work here."""


@dataclass(frozen=True)
class NumbaSettings:
    """What numba does in this process, as numba itself reports it.

    `threading_layer` is the layer running numba's parallel loops (tbb, omp, workqueue), None
    when no parallel numba code started in this process; `threading_layer_setting` what was
    asked for (default, tbb, ...). `threads` is the pool size (NUMBA_NUM_THREADS). `jit` is
    False under NUMBA_DISABLE_JIT (functions run as interpreted Python); `cuda_simulator` True
    when numba.cuda is the Python simulator (NUMBA_ENABLE_CUDASIM). `cache_dir` is where compiled
    functions of the numba engine are cached, None when caching is off or not yet set up
    (`cache` says which, and why). `opt_level` is NUMBA_OPT (3 unless set). `set_by` names, for
    each NUMBA_* setting given, where it came from: "environment" or the config file's path.
    """

    version: str
    threading_layer: str | None
    threading_layer_setting: str
    threads: int
    jit: bool
    cuda_simulator: bool
    cache: str
    cache_dir: str | None
    opt_level: int
    cpu: str = ""
    vectors: str = ""
    set_by: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# How the numba engine's cache was set up in this process (`prepare_cache`); None: not yet.
_cache_state: tuple[str, str | None] | None = None


def _config_path() -> Path:
    return Path.cwd() / CONFIG_FILE


def load() -> ModuleType:
    """Import numba, turning a setting it cannot read into one line (NumbaSettingError).

    numba warns about an unparsable NUMBA_* value (with a traceback in the warning's text) and
    goes on with its default, and a malformed .numba_config.yaml ends the import in a YAML
    traceback; both are bad input here.
    """
    if "numba" in sys.modules:
        return sys.modules["numba"]
    check_num_threads()
    _prefer_wide_vectors()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            import numba
        except Exception as err:  # yaml's errors, numba's own ValueErrors
            sys.modules.pop("numba", None)
            detail = " ".join(str(err).split())
            if _config_path().is_file():
                raise NumbaSettingError(
                    f"numba cannot read {_config_path()} ({type(err).__name__}: {detail}); "
                    "fix or remove that file"
                ) from None
            raise NumbaSettingError(
                f"numba cannot start ({type(err).__name__}: {detail}); check the NUMBA_* "
                "environment variables"
            ) from None
    for warning in caught:
        text = str(warning.message)
        if "could not be parsed" in text:
            first = text.splitlines()[0]
            raise NumbaSettingError(
                f"numba cannot use a setting: {first.rstrip('.')}; fix or unset it "
                f"(in the environment or {CONFIG_FILE})"
            )
        warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    return numba


def _target_named_in_config_file() -> bool:
    """Whether .numba_config.yaml names numba's CPU target (a file numba cannot read is left to
    numba's import, which `load` reports)."""
    path = _config_path()
    if not path.is_file():
        return False
    try:
        import yaml

        given = yaml.safe_load(path.read_text()) or {}
    except Exception:
        return True  # unreadable: decide nothing on its behalf
    names = {f"NUMBA_{str(k).upper()}" for k in given} if isinstance(given, dict) else set()
    return bool(names & set(TARGET_SETTINGS))


def _prefer_wide_vectors() -> None:
    """Before numba starts: on an AVX-512 CPU whose target nobody named, have LLVM compile for
    this CPU with 512-bit vectors (NUMBA_CPU_FEATURES = its features, -prefer-256-bit)."""
    own = os.environ.get(OWN_FEATURES)
    if own is not None and os.environ.get("NUMBA_CPU_FEATURES") == own:
        return  # a child of a cnnpar process: already chosen, alike
    if any(k in os.environ for k in TARGET_SETTINGS) or _target_named_in_config_file():
        return
    try:
        import llvmlite.binding as llvm

        features = llvm.get_host_cpu_features()
    except (ImportError, RuntimeError):
        return
    if not features.get("avx512f"):
        return
    chosen = f"{features.flatten()},{WIDE_VECTORS}"
    os.environ["NUMBA_CPU_FEATURES"] = chosen
    os.environ[OWN_FEATURES] = chosen


def _vectors() -> tuple[str, str]:
    """(LLVM CPU name, the widest vectors numba may use and who chose them)."""
    from numba.core.registry import cpu_target

    codegen = cpu_target.target_context.codegen()
    cpu = str(codegen._get_host_cpu_name())
    features = str(codegen._tm_features)
    own = os.environ.get(OWN_FEATURES)
    ours = own is not None and own == os.environ.get("NUMBA_CPU_FEATURES")
    if "+avx512f" in features and WIDE_VECTORS in features:
        width = "512-bit"
    elif "+avx512f" in features:
        width = "256 or 512-bit, as LLVM tunes for this CPU"
    elif "+avx" in features:
        width = "256-bit"
    else:
        width = "128-bit or narrower"
    if ours:
        return cpu, f"{width} (cnnpar: this CPU has AVX-512)"
    given = [k for k in TARGET_SETTINGS if set_by(k.removeprefix("NUMBA_"))]
    if given:
        return cpu, f"{width} ({', '.join(given)} given)"
    return cpu, f"{width} (LLVM's default for {cpu})"


def check_num_threads() -> None:
    value = os.environ.get("NUMBA_NUM_THREADS")
    if value is None:
        return
    try:
        ok = int(value) >= 1
    except ValueError:
        ok = False
    if not ok:
        raise NumbaSettingError(
            f"NUMBA_NUM_THREADS={value!r} is not a positive whole number; unset it or set a "
            "thread count (cnnpar sets the pool size from --threads)"
        )


def set_by(name: str) -> str | None:
    """Where numba's setting NUMBA_<NAME> came from: 'NAME=value' in the environment, 'key:
    value in <file>', or None when numba uses its default."""
    from numba.core import config

    key = f"NUMBA_{name.upper()}"
    if key in os.environ:
        return f"{key}={os.environ[key]}"
    given = getattr(config, "_env_reloader", None)
    given = getattr(given, "old_environ", {}) or {}
    if key in given:
        return f"{name.lower()}: {given[key]} in {_config_path()}"
    return None


def _sources() -> dict[str, str]:
    from numba.core import config

    given = getattr(getattr(config, "_env_reloader", None), "old_environ", {}) or {}
    own = os.environ.get(OWN_FEATURES)
    return {
        key: "environment" if key in os.environ else str(_config_path())
        for key in sorted(given)
        if key.startswith("NUMBA_")
        and not (key == "NUMBA_CPU_FEATURES" and own is not None and given[key] == own)
    }


def start_threads() -> str:
    """Start numba's thread pool; return its threading layer, or raise NumbaSettingError with
    one line naming the setting and the fix when the layer asked for cannot load."""
    numba = load()
    try:
        numba.get_num_threads()  # launches the pool
    except ValueError as err:
        raise NumbaSettingError(threading_problem(err)) from None
    return str(numba.threading_layer())


def threading_problem(err: Exception | None = None) -> str | None:
    """Why numba's threading layer cannot start here (one line naming the fix), or None when it
    starts. Starts the pool, as only starting it tells."""
    if err is None:
        try:
            start_threads()
        except NumbaSettingError as problem:
            return str(problem)
        return None
    from numba.core import config

    layer = str(config.THREADING_LAYER).lower()
    where = set_by("threading_layer") or f"threading layer {layer}"
    text = " ".join(str(err).split())
    if layer not in THREADING_LAYERS:
        return (
            f"{where}: numba knows no threading layer {layer!r}; unset it or use one of "
            f"{', '.join(THREADING_LAYERS)}"
        )
    if "TBB" in text or layer in ("tbb", "safe"):
        return f"{where} cannot be loaded (TBB not installed): unset it or install tbb"
    return f"{where} cannot be loaded ({text}): unset it or use another threading layer"


def started_layer() -> str | None:
    """The threading layer running numba's parallel code, None if none started yet (reading it
    must not start one: a torch-only command never touches numba's threads)."""
    numba = load()
    try:
        return str(numba.threading_layer())
    except ValueError:  # "Threading layer is not initialized."
        return None


def prepare_cache(source: str | os.PathLike[str]) -> bool:
    """Make `cache=True` work for functions defined in `source`, or say it cannot.

    numba caches next to the source (`__pycache__`) or under the user's cache directory; in a
    read-only install with a read-only home neither works, and decorating ends in "cannot cache
    function ... no locator available". Then NUMBA_CACHE_DIR is pointed at a per-user directory
    under the temporary directory; if that is not writable either, caching is off (every run
    compiles; warned about). Returns whether to cache; the outcome goes into `settings`.
    """
    global _cache_state
    numba = load()
    if numba.config.DISABLE_JIT:
        _cache_state = ("off: the JIT is off", None)
        return False
    found = _cache_dir_for(numba, source)
    if found is not None:
        _cache_state = ("on", found)
        return True
    fallback = Path(tempfile.gettempdir()) / f"cnnpar-numba-cache-{os.getuid()}"
    tried = os.environ.get("NUMBA_CACHE_DIR")
    os.environ["NUMBA_CACHE_DIR"] = str(fallback)
    numba.core.config.reload_config()
    found = _cache_dir_for(numba, source)
    if found is not None:
        why = (
            f"NUMBA_CACHE_DIR={tried} is"
            if tried
            else f"{Path(source).parent} and the user cache are"
        )
        _cache_state = (f"on, in the temporary directory: {why} not writable", found)
        return True
    if tried is None:
        del os.environ["NUMBA_CACHE_DIR"]
    else:
        os.environ["NUMBA_CACHE_DIR"] = tried
    numba.core.config.reload_config()
    _cache_state = ("off: no writable cache directory (install, home and temp are read-only)", None)
    print(
        f"cnnpar: warning: numba cannot cache compiled code ({Path(source).parent}, the user "
        f"cache and {fallback} are not writable): every run compiles anew; set NUMBA_CACHE_DIR "
        "to a writable directory",
        file=sys.stderr,
    )
    return False


def _cache_dir_for(numba: ModuleType, source: str | os.PathLike[str]) -> str | None:
    """The directory numba would cache a function of `source` in, or None if it has none: a
    probe function compiled with `source` as its file goes through numba's own locators."""
    namespace: dict[str, Any] = {}
    exec(compile("def _cache_probe():\n    return 0\n", os.fspath(source), "exec"), namespace)
    try:
        dispatcher = numba.njit(cache=True)(namespace["_cache_probe"])
    except RuntimeError as err:
        if "cannot cache" in str(err):
            return None
        raise
    cache = getattr(dispatcher, "_cache", None)
    path = getattr(cache, "_cache_path", None)
    return str(path) if path else "unknown"


def cuda_simulated() -> bool:
    """Whether numba.cuda is (or, once imported, will be) numba's CUDA simulator: fixed when
    numba.cuda is first imported, from numba's config at that moment."""
    numba = load()
    if "numba.cuda" in sys.modules:
        return "numba.cuda.simulator_init" in sys.modules
    return bool(numba.config.ENABLE_CUDASIM)


def settings() -> NumbaSettings:
    """numba's effective settings in this process (imports numba; starts no threads)."""
    numba = load()
    config = numba.core.config
    jit = not bool(config.DISABLE_JIT)
    if _cache_state is not None:
        cache, cache_dir = _cache_state
    else:
        cache, cache_dir = "unused: no numba engine ran in this process", None
    if not jit:
        cache, cache_dir = "off: the JIT is off", None
    cpu, vectors = _vectors()
    return NumbaSettings(
        version=str(numba.__version__),
        threading_layer=started_layer(),
        threading_layer_setting=str(config.THREADING_LAYER),
        threads=int(config.NUMBA_NUM_THREADS),
        jit=jit,
        cuda_simulator=cuda_simulated(),
        cache=cache,
        cache_dir=cache_dir,
        opt_level=int(config.OPT),
        cpu=cpu,
        vectors=vectors,
        set_by=_sources(),
    )


def _given_where(recorded: Mapping[str, Any], key: str) -> str:
    where = (recorded.get("set_by") or {}).get(key)
    if where is None:
        return ""
    if where == "environment":
        return f" ({key} in the environment)"
    return f" ({key.removeprefix('NUMBA_').lower()} in {where})"


def not_as_named(target: str, recorded: Mapping[str, Any]) -> str | None:
    """How an engine compiled for numba `target` ("cpu" or "cuda") runs under the recorded
    settings (`NumbaSettings.as_dict()`) when that is not as named ("in numba's CUDA simulator
    (...), not on a GPU"), or None when it runs as named."""
    if target == "cuda" and recorded.get("cuda_simulator"):
        where = _given_where(recorded, "NUMBA_ENABLE_CUDASIM")
        return f"in numba's CUDA simulator{where}, not on a GPU"
    if target == "cpu" and recorded.get("jit") is False:
        where = _given_where(recorded, "NUMBA_DISABLE_JIT")
        return f"with numba's JIT off{where}: interpreted Python, not compiled code"
    return None
