"""Starting, confining and stopping torch.distributed ranks, for `cnnpar train --engine
torch-ddp` and `cnnpar classify --mode ranks` alike.

    value = ranks.run(target, args, ranks=N, threads=T, timeout_s=60, region=make_region)

runs `target(ctx, *args)` on N ranks and returns rank 0's return value. `ctx` (a `RankContext`)
carries the rank, the world size and the placement; the process group (Gloo) is initialised
before `target` runs and destroyed after.

Two launchers, chosen by the environment:

- **local** (no SLURM step of N tasks): this process starts N ranks with torch.multiprocessing's
  spawn context and supervises them. The rendezvous is torch's own TCPStore, hosted here on a
  socket bound to 127.0.0.1 on a port the kernel picks (so it is free, and no other machine can
  reach it); Gloo's own sockets are bound to the loopback interface (GLOO_SOCKET_IFNAME=lo).
  Rank r is pinned to CPUs [r*T, (r+1)*T) of this process's affinity and confined to T threads
  (`measure.threads.set_threads`). This process holds the timed region (lock, probes, others'
  CPU time), which therefore covers every rank (they are its children).
- **srun** (SLURM_STEP_NUM_TASKS = N, i.e. N tasks started by `srun`): this process *is* one rank;
  rank, world size and local rank come from SLURM_PROCID, SLURM_STEP_NUM_TASKS and
  SLURM_LOCALID, the master address is the step's first node (`scontrol show hostnames`). Rank 0
  hosts the store on that node's address only, on a port derived from the job and step id, for the
  step's lifetime; it holds the timed region itself. A task SLURM left more CPUs than its
  threads (no task binding) pins itself to its local rank's share, as a local rank is pinned.

Faults: every collective (and the rendezvous) gives up after `timeout_s` (torch's own process
group timeout). Locally, a rank that exits abnormally ends the job at once, and a rank that hangs
ends it after `timeout_s`, when the others give up waiting for it; either way the error names the
rank, every rank still running is stopped (SIGTERM, then SIGKILL after `STOP_GRACE_S`), and the
command exits with 2. Ctrl-C stops every rank the same way (exit 130). Under srun, SLURM ends the
step when a task fails (srun --kill-on-bad-exit).
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import json
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from cnnpar.errors import CnnparError

DEFAULT_TIMEOUT_S = 60.0  # collective and rendezvous timeout: a hung rank ends the job after this
STOP_GRACE_S = 5.0  # SIGTERM → SIGKILL for ranks still running when the job ends
FAILURE_GRACE_S = 3.0  # after a first failure, how long the others get to report theirs
LOOPBACK = "127.0.0.1"
SLURM_PORT_BASE = 29500  # srun: port = base + (job id * 16 + step id) % SLURM_PORT_SPAN
SLURM_PORT_SPAN = 20000
EXIT_INTERRUPTED = 130


class RankError(CnnparError):
    """A rank failed, hung, or the layout cannot run here (exit 2)."""


@dataclass(frozen=True)
class Placement:
    """Where one rank runs: its rank, the world, and how it was started."""

    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int
    launcher: str  # "local" or "srun"
    cpus: tuple[int, ...] | None = None  # the CPUs it is pinned to (local launcher)
    # The CPUs the whole job may use on this rank's node, before any rank was pinned: part of
    # the machine identity, which must be the same as a one-process job's on that node.
    node_cpus: int | None = None


@dataclass
class RankContext:
    """What a rank's target sees: its placement, the store, and the hand-off of the timed
    region to whoever holds it (see `end_timed`)."""

    placement: Placement
    threads: int
    store: Any  # torch.distributed.TCPStore
    region: Any = None  # srun: rank 0's own TimedRegion, entered before the target runs
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def rank(self) -> int:
        return self.placement.rank

    @property
    def world_size(self) -> int:
        return self.placement.world_size

    def end_timed(self) -> Any:
        """Call on every rank when the timed work is over; rank 0 gets the region's
        `Interference` (or None), the others None. Locally the launcher closes its region
        (which spans every rank) and publishes the result through the store."""
        import torch.distributed as dist

        dist.barrier()  # every rank is done with the timed work
        if self.rank != 0:
            return None
        if self.region is not None:  # srun: rank 0 holds the region itself
            self.region.__exit__(None, None, None)
            return self.region.result
        self.store.set(TIMED_DONE, "1")
        return _interference_from_json(self.store.get(TIMED_RESULT).decode())

    def gather_ranks(self, extra: dict[str, Any] | None = None) -> list[dict[str, Any]] | None:
        """Every rank's host, CPU affinity and effective threads, with its `extra` entries (its
        own totals), on rank 0 (None elsewhere)."""
        import torch.distributed as dist

        mine = {**describe_rank(self.placement, self.threads), **(extra or {})}
        out: list[Any] | None = [None] * self.world_size if self.rank == 0 else None
        dist.gather_object(mine, out, dst=0)
        return out


TIMED_DONE = "cnnpar/timed-done"
TIMED_RESULT = "cnnpar/timed-result"


def describe_rank(placement: Placement, threads: int) -> dict[str, Any]:
    """This rank as the run record lists it: host, its machine identity (the node as the job
    may use it), CPUs it may run on (read now, after torch started), the thread counts the
    libraries report, and its SLURM job, step and task."""
    from cnnpar.measure.machine import this_machine
    from cnnpar.measure.threads import effective_threads

    return {
        "machine": this_machine(cpus=placement.node_cpus).as_dict(),
        "rank": placement.rank,
        "local_rank": placement.local_rank,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "launcher": placement.launcher,
        "cpu_affinity": sorted(os.sched_getaffinity(0)),
        "threads_requested": threads,
        **effective_threads(),
        # under srun: which job, step and task this rank was (None elsewhere)
        **{
            f"slurm_{key}": os.environ.get(f"SLURM_{key.upper()}")
            for key in ("job_id", "step_id", "procid")
        },
    }


def _interference_from_json(text: str) -> Any:
    from cnnpar.measure.interference import Interference

    data = json.loads(text)
    return None if data is None else Interference(**data)


# --- checks before any rank starts ----------------------------------------------------------


def check_layout(ranks: int, threads: int) -> None:
    """Refuse a layout this machine cannot run before any rank starts: ranks × threads above
    the CPUs this process may use (a local launch only; under srun SLURM allocated them)."""
    from cnnpar.limits import cpus_available

    if ranks < 1:
        raise RankError(f"--ranks must be >= 1 (got {ranks})")
    if slurm_step_tasks() > 1:
        return
    cpus = cpus_available()
    if ranks * threads > cpus:
        raise RankError(
            f"--ranks {ranks} x --threads {threads} = {ranks * threads} threads, more than the "
            f"{cpus} CPU(s) available; use fewer --ranks or --threads"
        )


def oversubscription(ranks: int, threads: int) -> dict[str, bool | int]:
    """`limits.oversubscription` of `ranks` ranks of `threads` threads each: locally they share
    this process's CPUs; under srun each task has its own allocation."""
    from cnnpar.limits import oversubscription as load

    processes = 1 if slurm_step_tasks() > 1 else ranks
    return load(processes=processes, threads_per_process=threads)


def slurm_step_tasks() -> int:
    """The tasks of the SLURM step this process runs in (srun), or 0 outside one."""
    value = os.environ.get("SLURM_STEP_NUM_TASKS") or ""
    return int(value) if value.isdigit() else 0


def slurm_placement(ranks: int) -> Placement | None:
    """This task's placement when `srun` started `ranks` tasks of it, else None (a step of one
    task, or no SLURM at all, launches locally)."""
    tasks = slurm_step_tasks()
    if tasks <= 1:
        return None
    if tasks != ranks:
        raise RankError(
            f"--ranks {ranks} does not match the {tasks} tasks srun started; "
            f"use --ranks {tasks} or srun --ntasks {ranks}"
        )
    env = os.environ
    nodes = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or ""
    job = int(env.get("SLURM_JOB_ID", "0") or 0)
    step = int(env.get("SLURM_STEP_ID", "0") or 0)
    return Placement(
        rank=int(env["SLURM_PROCID"]),
        world_size=tasks,
        local_rank=int(env.get("SLURM_LOCALID", "0") or 0),
        master_addr=first_node(nodes),
        master_port=SLURM_PORT_BASE + (job * 16 + step) % SLURM_PORT_SPAN,
        launcher="srun",
        # the job's CPUs on this node (SLURM's count), not this task's share of them
        node_cpus=int(env.get("SLURM_CPUS_ON_NODE") or len(os.sched_getaffinity(0))),
    )


def first_node(nodelist: str) -> str:
    """The first host of a SLURM node list ("node[01-04]" → "node01")."""
    if not nodelist:
        return socket.gethostname()
    try:
        out = subprocess.run(
            ["scontrol", "show", "hostnames", nodelist],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout.split()
    except (OSError, subprocess.SubprocessError):
        out = []
    return out[0] if out else nodelist.split(",")[0]


# --- one rank ---------------------------------------------------------------------------------


def _timeout(seconds: float) -> datetime.timedelta:
    return datetime.timedelta(seconds=seconds)


def _listening_socket(host: str, port: int) -> socket.socket:
    """A socket bound to `host` only (TCPStore alone would listen on every interface)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(256)
    return sock


def _host_store(host: str, port: int, timeout_s: float) -> tuple[Any, socket.socket]:
    import torch.distributed as dist

    sock = _listening_socket(host, port)
    store = dist.TCPStore(
        host,
        sock.getsockname()[1],
        None,
        True,
        timeout=_timeout(timeout_s),
        wait_for_workers=False,
        master_listen_fd=sock.fileno(),
    )
    return store, sock


def _init_group(placement: Placement, store: Any, timeout_s: float) -> None:
    import torch.distributed as dist

    dist.init_process_group(
        "gloo",
        store=dist.PrefixStore("pg", store),
        rank=placement.rank,
        world_size=placement.world_size,
        timeout=_timeout(timeout_s),
    )


def _die_with_parent() -> None:
    """Ask the kernel to SIGKILL this rank if its launcher dies (no orphaned ranks)."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _failure_kind(err: BaseException) -> str:
    """'comm' for a failed or timed-out collective (a symptom of another rank's fault), else
    'error'."""
    import torch.distributed as dist

    if isinstance(err, dist.DistError):
        return "comm"
    text = str(err).lower()
    symptoms = ("gloo", "timed out", "connection", "peer")
    return "comm" if any(w in text for w in symptoms) else "error"


def _local_rank_main(
    placement: Placement,
    threads: int,
    timeout_s: float,
    target: Callable[..., Any],
    args: tuple,
    conn: multiprocessing.connection.Connection,
) -> None:
    """A locally launched rank: confine, join the group, run the target, report."""
    _die_with_parent()
    code = 0
    try:
        if placement.cpus:
            os.sched_setaffinity(0, placement.cpus)
        os.environ["GLOO_SOCKET_IFNAME"] = "lo"  # Gloo's own sockets on the loopback only
        from cnnpar.measure.threads import set_threads

        set_threads(threads)  # before torch's first parallel op sizes its pool
        import torch.distributed as dist

        store = dist.TCPStore(
            placement.master_addr,
            placement.master_port,
            None,
            False,
            timeout=_timeout(timeout_s),
        )
        _init_group(placement, store, timeout_s)
        ctx = RankContext(placement, threads, store)
        value = target(ctx, *args)
        conn.send(("ok", value if placement.rank == 0 else None))
    except KeyboardInterrupt:
        code = EXIT_INTERRUPTED
    except CnnparError as err:
        conn.send(("error", "error", str(err)))
        code = 2
    except BaseException as err:  # reported to the launcher, which names the rank
        kind = _failure_kind(err)
        detail = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err) else ''}"
        with contextlib.suppress(Exception):
            conn.send((kind, kind, detail))
        if kind == "error":
            traceback.print_exc()
        code = 1
    finally:
        with contextlib.suppress(Exception):
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
        conn.close()
    sys.stdout.flush()
    sys.stderr.flush()
    if code == 0:
        sys.exit(0)  # a clean teardown releases what libraries registered (tqdm's lock)
    os._exit(code)  # a failed rank skips teardown: torch's pools may hang it


# --- the local launcher -------------------------------------------------------------------------


def placements(ranks: int, threads: int, port: int) -> list[Placement]:
    """Local placements: rank r on CPUs [r*T, (r+1)*T) of this process's affinity."""
    cpus = sorted(os.sched_getaffinity(0))
    return [
        Placement(
            rank=r,
            world_size=ranks,
            local_rank=r,
            master_addr=LOOPBACK,
            master_port=port,
            launcher="local",
            cpus=tuple(cpus[r * threads : (r + 1) * threads]) or None,
            node_cpus=len(cpus),
        )
        for r in range(ranks)
    ]


def _exit_text(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
        return f"killed by signal {-code}"
    return f"exit code {code}"


def stop(processes: list[Any], grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM every process still running, SIGKILL those left after `grace_s`, reap all."""
    for p in processes:
        if p.is_alive():
            with contextlib.suppress(Exception):
                p.terminate()
    deadline = time.monotonic() + grace_s
    for p in processes:
        p.join(max(0.0, deadline - time.monotonic()))
    for p in processes:
        if p.is_alive():
            with contextlib.suppress(Exception):
                p.kill()
            p.join(grace_s)


def _diagnose(processes: list[Any], reports: dict[int, tuple], timeout_s: float) -> str:
    """One line naming the rank at fault: one that died, else one that failed on its own,
    else one still running while the others gave up waiting for it (hung)."""
    for r, p in enumerate(processes):
        if p.exitcode not in (None, 0) and r not in reports:
            return f"rank {r} died ({_exit_text(p.exitcode)})"
    for r, report in sorted(reports.items()):
        if report[0] == "error":
            return f"rank {r} failed: {report[2]}"
    alive = [r for r, p in enumerate(processes) if p.exitcode is None]
    if alive:
        return (
            f"rank {alive[0]} stopped responding: the other ranks waited {timeout_s:g} s for it "
            "(raise --rank-timeout if a step really takes that long)"
        )
    r, report = min(reports.items())
    return f"rank {r} failed: {report[2]}"


def _launch_local(
    target: Callable[..., Any],
    args: tuple,
    ranks: int,
    threads: int,
    timeout_s: float,
    region: Callable[[], Any] | None,
) -> Any:
    store, sock = _host_store(LOOPBACK, 0, timeout_s)
    port = sock.getsockname()[1]
    spawn = multiprocessing.get_context("spawn")  # never fork: torch's OpenMP would deadlock
    processes, conns = [], []
    stack = contextlib.ExitStack()
    timed = None
    try:
        if region is not None:
            timed = region()
            stack.enter_context(timed)
        for placement in placements(ranks, threads, port):
            receive, send = spawn.Pipe(duplex=False)
            p = spawn.Process(
                target=_local_rank_main,
                args=(placement, threads, timeout_s, target, args, send),
                name=f"cnnpar-rank-{placement.rank}",
            )
            p.start()
            send.close()
            processes.append(p)
            conns.append(receive)
        reports: dict[int, tuple] = {}
        value = None
        failed_at: float | None = None
        published = False
        open_conns = dict(enumerate(conns))
        while True:
            waiting = [p.sentinel for p in processes if p.exitcode is None]
            waiting += list(open_conns.values())
            if not waiting:
                break
            multiprocessing.connection.wait(waiting, timeout=0.2)
            for r, conn in list(open_conns.items()):
                if conn.poll():
                    try:
                        report = conn.recv()
                    except EOFError:
                        del open_conns[r]
                        continue
                    if report[0] == "ok":
                        if r == 0:
                            value = report[1]
                    else:
                        reports[r] = report
            for p in processes:
                if p.exitcode is None and not p.is_alive():
                    p.join()
            if not published and store.check([TIMED_DONE]):
                stack.close()  # the region ends: probes, CPU accounting
                result = None if timed is None else timed.result
                store.set(TIMED_RESULT, json.dumps(None if result is None else result.as_dict()))
                published = True
            bad = [p for p in processes if p.exitcode not in (None, 0)] or reports
            if bad and failed_at is None:
                failed_at = time.monotonic()
            if failed_at is not None and (
                time.monotonic() - failed_at > FAILURE_GRACE_S
                or all(p.exitcode is not None for p in processes)
            ):
                raise RankError(_diagnose(processes, reports, timeout_s))
        if any(p.exitcode == EXIT_INTERRUPTED for p in processes):
            raise KeyboardInterrupt
        # Every rank may have exited and closed its pipe between two passes of the loop, which
        # then ends without having seen the failure.
        if any(p.exitcode != 0 for p in processes) or reports:
            raise RankError(_diagnose(processes, reports, timeout_s))
        return value
    finally:
        stop(processes)
        for conn in conns:
            conn.close()
        stack.close()
        sock.close()


# --- the entry point -----------------------------------------------------------------------


def run(
    target: Callable[..., Any],
    args: tuple = (),
    *,
    ranks: int,
    threads: int,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    region: Callable[[], Any] | None = None,
) -> Any:
    """Run `target(ctx, *args)` on `ranks` ranks of `threads` threads each; return rank 0's
    value (None on the other ranks of an srun step).

    `target` must be a module-level function (the local launcher pickles it into spawned
    processes) and call `ctx.end_timed()` on every rank after its timed work. `region` makes
    the timed region (a `measure.interference.TimedRegion`); locally it spans every rank.
    Raises RankError naming the rank when one fails or hangs, KeyboardInterrupt on Ctrl-C,
    after stopping every rank.
    """
    check_layout(ranks, threads)
    placement = slurm_placement(ranks)
    if placement is None:
        return _launch_local(target, args, ranks, threads, timeout_s, region)
    return _run_srun_task(placement, target, args, threads, timeout_s, region)


def _confine_task(local_rank: int, threads: int) -> None:
    """Pin an srun task to its own `threads` CPUs when SLURM left it more (a cluster without
    task binding gives every task of a node the whole allocation): local task r takes CPUs
    [r*T, (r+1)*T) of what it may use, as the local launcher places its ranks."""
    cpus = sorted(os.sched_getaffinity(0))
    mine = cpus[local_rank * threads : (local_rank + 1) * threads]
    if len(cpus) > threads and len(mine) == threads:
        os.sched_setaffinity(0, mine)


def _run_srun_task(
    placement: Placement,
    target: Callable[..., Any],
    args: tuple,
    threads: int,
    timeout_s: float,
    region: Callable[[], Any] | None,
) -> Any:
    from cnnpar.measure.threads import set_threads

    _confine_task(placement.local_rank, threads)
    set_threads(threads)
    import torch.distributed as dist

    sock = None
    if placement.rank == 0:
        store, sock = _host_store(
            socket.gethostbyname(placement.master_addr), placement.master_port, timeout_s
        )
    else:
        store = dist.TCPStore(
            placement.master_addr,
            placement.master_port,
            None,
            False,
            timeout=_timeout(timeout_s),
        )
    _init_group(placement, store, timeout_s)
    timed = None
    try:
        if placement.rank == 0 and region is not None:
            timed = region()
            timed.__enter__()
        ctx = RankContext(placement, threads, store, region=timed)
        return target(ctx, *args)
    finally:
        dist.destroy_process_group()
        if sock is not None:
            sock.close()


def placement_dict(placement: Placement) -> dict[str, Any]:
    return asdict(placement)
