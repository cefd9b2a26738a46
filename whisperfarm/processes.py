"""Processes on this machine: a run records its pid, and whoever finds the run still
marked running (the status view, a second run of the same episode, ``remove``, the warm
pool) asks whether that process is still there."""

from __future__ import annotations

import os
from collections.abc import Callable

PidAlive = Callable[[int], bool]
"""Whether the process with this pid runs; injected where tests pin it."""


def process_alive(pid: int) -> bool:
    """Whether a process with this pid runs on this machine (runs record their pid)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
