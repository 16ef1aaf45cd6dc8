"""What a test asks of the processes a cnnpar run started, once the run has ended."""

from __future__ import annotations

import contextlib

import psutil

# multiprocessing's resource tracker exits when its pipe from the launcher closes, a moment
# after the launcher itself: wait this long before calling a process left behind.
EXIT_GRACE_S = 5.0


def left_running(processes: list[psutil.Process]) -> list[list[str]]:
    """Command lines of `processes` still running (not zombies) EXIT_GRACE_S after their
    launcher ended; [] when none is."""
    _, alive = psutil.wait_procs(processes, timeout=EXIT_GRACE_S)
    left = []
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            # is_running() compares creation times: a recycled pid is not one of ours
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                left.append(p.cmdline())
    return left
