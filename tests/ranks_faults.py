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


def main_with_dying_rank(argv: list[str]) -> int:
    """`cnnpar train ...` whose training ranks run `rank_dies` (a shim for the CLI test)."""
    from cnnpar import cli, train

    train._train_rank = rank_dies
    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main_with_dying_rank(sys.argv[1:]))
