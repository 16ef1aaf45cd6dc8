"""The `cnnpar` command: argument parsing, exit codes and error messages only.

Every subcommand validates its arguments here and hands a typed config to the module that
does the work. Every failure prints one line; the exit codes are in `EPILOG`.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import sys
from collections.abc import Callable, Sequence
from types import FrameType
from typing import NoReturn

from cnnpar import __version__
from cnnpar.errors import CnnparError, Terminated, WriteError
from cnnpar.limits import PARALLELISM_PER_CPU, check_parallelism
from cnnpar.params import CLASSIFY, TRAIN, Param, parse_bool
from cnnpar.registry import BACKENDS, ENGINES, MODELS, MODES

EXIT_OK = 0
EXIT_IO = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 128 + signal.SIGINT
EXIT_TERMINATED = 128 + signal.SIGTERM

EPILOG = (
    f"exit status: {EXIT_OK} done; {EXIT_IO} writing or memory failed (disk full, read-only or "
    "unwritable file system, out of memory; the message names the file and the cause); "
    f"{EXIT_USAGE} bad arguments or input, refused before any work (thread or worker counts "
    f"above {PARALLELISM_PER_CPU} x the CPU count, sizes whose memory estimate exceeds the "
    "available memory), or a run that failed (a worker process died, the training loss became "
    "NaN, infinite or more than 10 x ln 10, ten times its value at random guessing; every data "
    f"mirror failed); {EXIT_INTERRUPTED} interrupted (Ctrl-C); {EXIT_TERMINATED} terminated "
    "(SIGTERM). A run that fails or is stopped leaves no run directory and no temporary files "
    "behind: each is written as a hidden sibling (.NAME.tmp-PID-*) and renamed into place at "
    "the end."
)


class UsageError(Exception):
    """A command line argparse rejects, raised instead of argparse's exit so that `main` prints
    one line and returns 2 like every other user error."""

    def __init__(self, prog: str, message: str) -> None:
        super().__init__(message)
        self.prog = prog


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # "argument --rows: must be >= 1 (got 0)" reads better as "--rows must be >= 1 (got 0)".
        match = re.fullmatch(r"argument ([^:]+): (.*)", message, flags=re.DOTALL)
        text = f"{match[1]} {match[2]}" if match else message
        raise UsageError(self.prog, " ".join(text.split()))


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1 (got {value})")
    return value


def _positive_ints(text: str) -> tuple[int, ...]:
    """A comma-separated list of positive integers ("2" or "1,2")."""
    return tuple(_positive_int(part.strip()) for part in text.split(","))


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 (got {value})")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0 (got {value})")
    return value


def _bool(text: str) -> bool:
    try:
        return parse_bool(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _param_type(param: Param) -> Callable[[str], object]:
    """argparse's `type` for a run parameter: its declared type and bounds."""

    def parse(text: str) -> object:
        try:
            return param.parse(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    return parse


def _add_params(p: argparse.ArgumentParser, declared: Sequence[Param]) -> None:
    """An option per declared run parameter (cnnpar.params): flag, type, default and help."""
    for param in declared:
        p.add_argument(
            param.flag,
            dest=param.name,
            type=_param_type(param),
            default=param.default,
            choices=list(param.choices) or None,
            metavar=param.cli_metavar,
            help=param.cli_help(),
        )


def _param_values(args: argparse.Namespace, declared: Sequence[Param]) -> dict[str, object]:
    """The parsed run parameters by name: the fields of TrainConfig or ClassifyConfig."""
    return {param.name: getattr(args, param.name) for param in declared}


def _add_data_source(p: argparse.ArgumentParser, aliases: Sequence[str] = ()) -> None:
    p.add_argument(
        "--data-source",
        *aliases,
        dest="data_source",
        default="bundled",
        help="bundled (default, shipped with cnnpar), download, or a directory of MNIST IDX "
        "files, raw or .gz" + (f" ({' and '.join(aliases)} is an alias)" if aliases else ""),
    )
    p.add_argument(
        "--mirror",
        dest="mirrors",
        action="append",
        default=None,
        metavar="URL",
        help="with --data-source download: a mirror serving the MNIST .gz files (an institutional "
        "mirror or proxy), tried instead of the public ones; repeat to try several in order",
    )


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be a fraction in 0..1 (got {value})")
    return value


def _add_timing(p: argparse.ArgumentParser) -> None:
    """Options of the guard around a timed region (cnnpar.measure.interference)."""
    from cnnpar.measure.interference import DEFAULT_LOCK, Limits

    g = p.add_argument_group("timing guard")
    _add_machine_label(g)
    g.add_argument(
        "--block",
        type=_positive_int,
        default=None,
        help="the paired block of a study this run belongs to (recorded; the workflow sets it)",
    )
    g.add_argument(
        "--timing-lock",
        default=str(DEFAULT_LOCK),
        help="file every timed cnnpar run on this machine locks, so timings never overlap "
        f"(default {DEFAULT_LOCK})",
    )
    g.add_argument(
        "--max-others-share",
        type=_share,
        default=Limits.max_others_share,
        help="flag the run when other processes take more than this share of its CPUs "
        f"(default {Limits.max_others_share})",
    )
    g.add_argument(
        "--max-probe-change",
        type=_share,
        default=Limits.max_probe_change,
        help="flag the run when its matmul probes before and after differ by more than this "
        f"(default {Limits.max_probe_change})",
    )


def _machine_label(text: str) -> str:
    from cnnpar.measure.machine import check_label

    try:
        return str(check_label(text))
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _add_machine_label(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--machine-label",
        type=_machine_label,
        default=None,
        metavar="LABEL",
        help="name this machine in the run record; part of its identity, with the CPU model, "
        "usable CPUs, memory and GPU (the workflow sets it from machine_label)",
    )


def _timing_kwargs(args: argparse.Namespace) -> dict:
    from cnnpar.measure.interference import Limits

    return {
        "machine_label": args.machine_label,
        "block": args.block,
        "timing_lock": args.timing_lock,
        "limits": Limits(args.max_others_share, args.max_probe_change),
    }


# --- info / data -------------------------------------------------------------------------


def _cmd_info(args: argparse.Namespace) -> int:
    from cnnpar import limits
    from cnnpar.measure import numba_settings
    from cnnpar.measure.environment import environment
    from cnnpar.measure.roofline import sgemm_peak
    from cnnpar.measure.threads import set_threads

    check_parallelism(args.threads, "--threads")
    # A numba setting that cannot work is reported after the record, which shows the rest.
    try:
        problem = numba_settings.threading_problem()
    except numba_settings.NumbaSettingError as err:
        problem = str(err)
    threads = set_threads(args.threads, numba=problem is None)
    if problem is None:  # sets up the numba engine's cache, whose state the record shows
        import cnnpar.nets.tinycnn.numba_engine  # noqa: F401
    record = environment().as_dict()  # after torch and numba started: their CPUs, settings
    record["threads"] = threads
    limits.warn_if_narrowed(record["cpus_available"])
    if not args.no_sgemm:
        record.update(sgemm_peak(args.threads))
    if args.json:
        print(json.dumps(record, indent=2, sort_keys=True))
    else:
        rows = [
            (f"{key}.{sub}" if isinstance(value, dict) and key != "threads" else key, item)
            for key, value in record.items()
            for sub, item in (
                value.items() if isinstance(value, dict) and key != "threads" else [(key, value)]
            )
        ]
        width = max(len(k) for k, _ in rows)
        for key, value in rows:
            print(f"{key:<{width}}  {value}")
    if problem is not None:
        raise numba_settings.NumbaSettingError(problem)
    return 0


def _add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "info",
        help="print the environment record (machine, limits, numba's effective settings) and "
        "the sgemm roofline",
        description="Print the environment record every run stores: the machine, the CPUs this "
        "process may use once torch and numba started, cgroup and SLURM limits, numba's "
        "effective settings (threading layer, JIT, CUDA simulator, cache) and the thread "
        "counts. Exits 2 after the record when a numba setting cannot work here.",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument(
        "--threads",
        type=_positive_int,
        default=1,
        help="thread count for the sgemm measurement (default 1)",
    )
    p.add_argument("--no-sgemm", action="store_true", help="skip the sgemm peak measurement")
    p.set_defaults(func=_cmd_info)


def _cmd_data_verify(args: argparse.Namespace) -> int:
    from cnnpar import data

    source = args.data_source
    counts = data.verify(source, args.mirrors)
    print(f"source: {data.resolve_source(source, args.mirrors)}")
    for split, per_label in counts.items():
        print(
            f"{split}: {sum(per_label)} images, sha256 ok; per label 0-9: "
            + " ".join(str(c) for c in per_label)
        )
    return 0


def _add_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="MNIST data commands")
    data_sub = p.add_subparsers(dest="data_command", required=True, metavar="COMMAND")
    v = data_sub.add_parser(
        "verify", help="check the IDX files (magic, size, sha256) and print the label counts"
    )
    _add_data_source(v, aliases=("--dir",))
    v.set_defaults(func=_cmd_data_verify)


# --- bench -------------------------------------------------------------------------------

Registrar = Callable[[argparse._SubParsersAction], None]
# `cnnpar bench <what>` subcommands; each stage module's section below appends its own.
BENCH_REGISTRARS: list[Registrar] = []


def _add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="a small built-in study: rates, speedups, roofline, targets")
    bench_sub = p.add_subparsers(dest="bench_command", required=True, metavar="WHAT")
    for register in BENCH_REGISTRARS:
        register(bench_sub)


# --- train / engines ---------------------------------------------------------------------
# The run parameters check their declared bounds as they parse; train.validate checks the
# resolved config (the model's defaults filled in) and whatever depends on several options.


def _add_rank_options(p: argparse.ArgumentParser, what: str) -> None:
    from cnnpar.ranks import DEFAULT_TIMEOUT_S

    p.add_argument(
        "--ranks",
        type=_positive_int,
        default=1,
        help=f"torch.distributed ranks ({what}; under srun, its task count); default 1",
    )
    p.add_argument(
        "--rank-timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        help="seconds a rank waits for the others in a collective before the job ends "
        f"(default {DEFAULT_TIMEOUT_S:g})",
    )


def _cmd_train(args: argparse.Namespace) -> int:
    from cnnpar import train

    # One run directory per count; with one count, {threads} is simply that count.
    out = args.out.replace(train.THREADS_FIELD, str(args.threads[0]))
    cfg = train.TrainConfig(
        out=args.out if len(args.threads) > 1 else out,
        model=args.model,
        engine=args.engine,
        threads=args.threads[0],
        **_param_values(args, TRAIN),
        data_source=args.data_source,
        mirrors=tuple(args.mirrors or ()),
        ranks=args.ranks,
        rank_timeout=args.rank_timeout,
        **_timing_kwargs(args),
    )
    if len(args.threads) > 1:
        results = train.run_interleaved(cfg, args.threads)
    else:
        results = [train.run(cfg)]
    if results[0] is None:  # a rank other than 0 of an srun step: rank 0 reports
        return 0
    for result in results:
        if len(results) > 1:
            print(f"{result.record.parallelism.requested} threads:")
        for row in result.rows:
            print(train.format_row(row))
        print(f"wrote {', '.join([*result.record.outputs, 'run.json'])} to {result.out}")
    return 0


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train TinyCNN on an engine, or MosaicNet with torch; write weights and metrics",
    )
    p.add_argument("--model", default="tinycnn", choices=list(MODELS))
    p.add_argument(
        "--engine",
        default=None,
        choices=list(ENGINES),
        help="default: " + ", ".join(f"{m.default_engine} ({m.name})" for m in MODELS.values()),
    )
    p.add_argument(
        "--threads",
        type=_positive_ints,
        default=(1,),
        metavar="N[,N...]",
        help="CPU threads (per rank; default 1). Several (numba, torch, with --time-budget): "
        "each trains that long in one process, the counts taking turns in 0.1-second windows; "
        "--out then names one directory per count with {threads} (replaced by the count)",
    )
    _add_rank_options(p, "engine torch-ddp")
    _add_params(p, TRAIN)
    _add_data_source(p)
    p.add_argument("--out", required=True, help="run directory to write")
    _add_timing(p)
    p.set_defaults(func=_cmd_train)


def _cmd_engines(args: argparse.Namespace) -> int:
    from cnnpar import train
    from cnnpar.study.config import unavailable_reason

    table = train.engines_table()
    if args.json:  # engine → status, as before the modes were listed
        print(json.dumps(dict(table), indent=2))
        return 0
    modes = [(name, unavailable_reason(name, "classify mode") or "available") for name in MODES]
    width = max(len(name) for name, _ in table + modes)
    for title, rows in (("engines (train --engine)", table), ("modes (classify --mode)", modes)):
        print(title)
        for name, status in rows:
            print(f"  {name:<{width}}  {status}")
    return 0


def _add_engines(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "engines", help="list the training engines and classify modes, and if each runs here"
    )
    p.add_argument(
        "--json", action="store_true", help="print the engines as JSON instead of a table"
    )
    p.set_defaults(func=_cmd_engines)


def _cmd_bench_train(args: argparse.Namespace) -> int:
    from cnnpar.bench.train import train_bench

    train_bench(
        engines=None if args.engines is None else args.engines.split(","),
        threads=args.threads,
        blocks=args.blocks,
        time_budget=args.time_budget,
        out=args.out,
        csv_path=args.csv,
        timing_lock=args.timing_lock,
    )
    return 0


def _add_bench_options(p: argparse.ArgumentParser, blocks_help: str) -> None:
    """The options both benches share: blocks, where the rows and runs go, the timing lock."""
    from cnnpar.measure.interference import DEFAULT_LOCK

    p.add_argument("--blocks", type=_positive_int, default=5, help=f"{blocks_help} (default 5)")
    p.add_argument("--csv", default=None, help="also write the summary rows to this CSV file")
    p.add_argument(
        "--out",
        default=None,
        help="keep the run directories and tables in this new or empty directory "
        "(default: a temporary one)",
    )
    p.add_argument(
        "--timing-lock",
        default=str(DEFAULT_LOCK),
        help=f"file every timed cnnpar run locks (default {DEFAULT_LOCK})",
    )


def _add_bench_train(sub: argparse._SubParsersAction) -> None:
    from cnnpar.bench.train import DEFAULT_ENGINES, ENGINE_CHOICES

    p = sub.add_parser(
        "train",
        help="TinyCNN F=8 B=32 training: rates, thread speedups, roofline fractions, targets",
    )
    p.add_argument(
        "--engines",
        default=None,
        help=f"comma-separated, from {', '.join(ENGINE_CHOICES)} "
        f"(default: those of {','.join(DEFAULT_ENGINES)} that can run here)",
    )
    p.add_argument(
        "--threads", type=_positive_ints, default=(1, 2), help="thread counts (default 1,2)"
    )
    p.add_argument(
        "--time-budget",
        type=_positive_float,
        default=1.0,
        help="seconds each engine trains per thread count and block (default 1)",
    )
    _add_bench_options(p, "blocks; each trains every engine and thread count once")
    p.set_defaults(func=_cmd_bench_train)


BENCH_REGISTRARS.append(_add_bench_train)


# --- classify ----------------------------------------------------------------------------
# Numeric ranges are checked by classify.validate (one-line errors, exit 2, before any work).


def _cmd_classify(args: argparse.Namespace) -> int:
    from pathlib import Path

    from cnnpar import classify

    cfg = classify.ClassifyConfig(
        weights=Path(args.weights),
        out=Path(args.out),
        rows=args.rows,
        cols=args.cols,
        mode=args.mode,
        workers=args.workers,
        **_param_values(args, CLASSIFY),
        backend=args.backend,
        data_source=args.data_source,
        mirrors=tuple(args.mirrors or ()),
        tune_malloc=args.tune_malloc,
        ranks=args.ranks,
        threads=args.threads,
        rank_timeout=args.rank_timeout,
        **_timing_kwargs(args),
    )
    result = classify.run(cfg, progress=sys.stderr.isatty())
    if result is None:  # a rank other than 0 of an srun step: rank 0 reports
        return 0
    for line in classify.summary_lines(result):
        print(line)
    print(f"wrote {', '.join([*classify.outputs.RESULT_FILES, 'run.json'])} to {cfg.out}")
    return 0


def _add_classify(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "classify",
        help="classify a mosaic of test digits with MosaicNet (" + "/".join(MODES) + ")",
    )
    p.add_argument(
        "--weights", required=True, help="model.pt from `cnnpar train --model mosaicnet`"
    )
    p.add_argument("--rows", type=_positive_int, required=True, help="mosaic rows")
    p.add_argument("--cols", type=_positive_int, required=True, help="mosaic columns")
    p.add_argument("--mode", default="sequential", choices=list(MODES))
    p.add_argument(
        "--workers",
        type=_positive_int,
        default=1,
        help="torch threads (threads) or processes (default 1)",
    )
    _add_rank_options(p, "mode ranks")
    p.add_argument(
        "--threads", type=_positive_int, default=1, help="torch threads per rank (mode ranks)"
    )
    _add_params(p, CLASSIFY)
    p.add_argument(
        "--backend",
        default="auto",
        choices=list(BACKENDS),
        help="how the net runs (default auto: " + BACKENDS["auto"].summary + ")",
    )
    p.add_argument(
        "--tune-malloc",
        type=_bool,
        default=True,
        metavar="{true,false}",
        help="keep freed torch buffers in glibc's heap between batches (default true)",
    )
    _add_data_source(p)
    p.add_argument("--out", required=True, help="run directory to write")
    _add_timing(p)
    p.set_defaults(func=_cmd_classify)


def _cmd_bench_classify(args: argparse.Namespace) -> int:
    from cnnpar.bench.classify import classify_bench

    classify_bench(
        modes=args.modes.split(","),
        workers=args.workers,
        blocks=args.blocks,
        rows=args.rows,
        cols=args.cols,
        repeats=args.repeats,
        weights=args.weights,
        out=args.out,
        csv_path=args.csv,
        timing_lock=args.timing_lock,
    )
    return 0


def _add_bench_classify(sub: argparse._SubParsersAction) -> None:
    from cnnpar.bench.classify import DEFAULT_MODES, MODE_CHOICES

    p = sub.add_parser(
        "classify",
        help="MosaicNet B=256 classification: rates, mode speedups, roofline fractions, target",
    )
    p.add_argument(
        "--modes",
        default=",".join(DEFAULT_MODES),
        help=f"comma-separated, from {', '.join(MODE_CHOICES)} (default {','.join(DEFAULT_MODES)})",
    )
    p.add_argument(
        "--workers", type=_positive_ints, default=(1, 2), help="worker counts (default 1,2)"
    )
    p.add_argument("--rows", type=_positive_int, default=100, help="mosaic rows (default 100)")
    p.add_argument("--cols", type=_positive_int, default=100, help="mosaic cols (default 100)")
    p.add_argument(
        "--repeats",
        type=_positive_int,
        default=3,
        help="timed classifications per run, after its start-up (default 3)",
    )
    p.add_argument("--weights", default=None, help="model.pt (default: seeded random-init weights)")
    _add_bench_options(p, "blocks; each runs every mode and worker count once")
    p.set_defaults(func=_cmd_bench_classify)


BENCH_REGISTRARS.append(_add_bench_classify)


# --- parser -----------------------------------------------------------------------------

# --- compare / pack --------------------------------------------------------------------------


def _percent(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value < 100:
        raise argparse.ArgumentTypeError(f"must be a percentage in 0..100 (got {value:g})")
    return value


def _cmd_compare(args: argparse.Namespace) -> int:
    from cnnpar.study import compare

    return compare.run(args.base, args.others, fail_slower=args.fail_slower, csv=args.csv)


def _add_compare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare",
        help="result sets side by side (other machines or commits): rates, ratios, verdicts",
        description="Align the configurations present in every result set by what was asked "
        "and print each set's rate and the ratio OTHER/BASE with a 95% interval (Welch's t "
        "on the log rates over blocks: the sets were measured at different moments). Exit "
        "status: 0 no regression (or no --fail-slower), 1 a configuration is significantly "
        "slower than BASE by more than --fail-slower percent, 2 bad input.",
    )
    p.add_argument("base", metavar="BASE", help="results directory or `cnnpar pack` archive")
    p.add_argument("others", nargs="+", metavar="OTHER", help="result sets compared with BASE")
    p.add_argument(
        "--fail-slower",
        type=_percent,
        default=None,
        metavar="PCT",
        help="exit 1 when a configuration is significantly slower than BASE (its interval "
        "below 1) and more than PCT percent slower; without it, report only",
    )
    p.add_argument("--csv", default=None, metavar="FILE", help="also write the rows to FILE")
    p.set_defaults(func=_cmd_compare)


def _cmd_pack(args: argparse.Namespace) -> int:
    from cnnpar.study import compare

    out = args.out or f"{args.results.rstrip('/') or 'results'}.tar.gz"
    target, count = compare.pack(args.results, out)
    print(f"wrote {target} ({count} files): copy it anywhere and `cnnpar compare` it")
    return 0


def _add_pack(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pack", help="one archive of a result set (tables, config, run records) to compare"
    )
    p.add_argument("results", nargs="?", default="results", help="results directory")
    p.add_argument("-o", "--out", default=None, help="archive to write (default RESULTS.tar.gz)")
    p.set_defaults(func=_cmd_pack)


REGISTRARS: list[Registrar] = [
    _add_info,
    _add_data,
    _add_bench,
    _add_train,
    _add_engines,
    _add_classify,
    _add_compare,
    _add_pack,
]


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="cnnpar",
        description="CNN training and inference scaling on MNIST across engines and parallelism",
        epilog=EPILOG,
    )
    parser.add_argument("--version", action="version", version=f"cnnpar {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in REGISTRARS:
        register(sub)
    return parser


def _os_error_text(err: OSError) -> str:
    if isinstance(err, WriteError) or err.strerror is None:
        return " ".join(str(err).split())
    return f"{err.filename}: {err.strerror}" if err.filename else err.strerror


def _raise_terminated(signum: int, frame: FrameType | None) -> NoReturn:
    raise Terminated


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as err:
        print(f"{err.prog}: error: {err} (see {err.prog} --help)", file=sys.stderr)
        return EXIT_USAGE
    # SIGTERM (a scheduler cancelling the job, `timeout`) unwinds like Ctrl-C, so temporary run
    # directories and worker processes are cleaned up on the way out.
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        return _run(args)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run(args: argparse.Namespace) -> int:
    prefix = f"cnnpar {args.command}: error:"
    try:
        return int(args.func(args) or 0)
    except CnnparError as err:
        print(f"{prefix} {err}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as err:  # writing failed, or the OS refused something else
        print(f"{prefix} {_os_error_text(err)}", file=sys.stderr)
        return EXIT_IO
    except MemoryError:
        print(f"{prefix} out of memory; use smaller sizes or fewer workers", file=sys.stderr)
        return EXIT_IO
    except KeyboardInterrupt:
        print("cnnpar: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Terminated:
        print("cnnpar: terminated", file=sys.stderr)
        return EXIT_TERMINATED


if __name__ == "__main__":
    sys.exit(main())
