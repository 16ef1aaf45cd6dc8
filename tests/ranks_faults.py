"""Rank targets with faults, for tests/test_ranks.py (spawned ranks import them by name)."""

from __future__ import annotations

import os
import sys
import time


def rank_dies(ctx, *args):
    """Rank 1 exits abruptly once the group is up; rank 0 waits for it in a collective."""
    import torch.distributed as dist

    if ctx.rank == 1:
        os._exit(7)
    dist.barrier()
    return "unreachable"


def every_rank_dies(ctx, *args):
    """Every rank exits abruptly at once, before any report: the launcher may see all of them
    gone, pipes closed, in one pass."""
    os._exit(7)


def rank_hangs(ctx, *args):
    """Rank 1 never reaches the collective the others wait in."""
    import torch.distributed as dist

    if ctx.rank == 1:
        time.sleep(3600)
    dist.barrier()
    return "unreachable"


def rank_ok(ctx, *args):
    import torch.distributed as dist

    dist.barrier()
    ctx.end_timed()
    return {"rank": ctx.rank, "ranks": ctx.gather_ranks()}


def main_with_faulty_rank(argv: list[str]) -> int:
    """`cnnpar train|classify ...` whose ranks run `rank_dies`, or `rank_hangs` when argv starts
    with "hang" (a shim for the CLI tests: spawned ranks import the target from here)."""
    from cnnpar import classify, cli, train

    target = rank_dies
    if argv[:1] == ["hang"]:
        target, argv = rank_hangs, argv[1:]
    train._train_rank = target
    classify._classify_rank = target
    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main_with_faulty_rank(sys.argv[1:]))
