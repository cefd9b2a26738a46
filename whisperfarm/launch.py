"""The ``whisperfarm`` command's entry point: start the local workers' processes of a
transcription before anything heavy is imported, then run the CLI.

A ``transcribe`` whose command line and environment leave the local fleet at its
default (``spawn.default_workers``: one worker per core on up to 4 cores) gets that
fleet's processes as standby workers at once (``spawn.StandbyWorkers``). Their imports
then run beside the CLI's (typer, the coordinator, the ledger: about a second on 2 cores)
and the run hands them their orders when its coordinator is up. A config file that
changes the fleet is read only later, with the settings: the run then takes the standbys
that suit it and lets the others go, which exit at once.

This module imports the standard library and ``whisperfarm.spawn`` only, until the CLI.
"""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Mapping, Sequence

from whisperfarm.spawn import StandbyWorkers, default_workers

LAYOUT_FLAGS = ("--workers", "-w", "--threads", "--backend", "--dry-run", "--help")
"""transcribe's flags that change its local fleet or start none."""

LAYOUT_VARIABLES = ("WHISPERFARM_WORKERS", "WHISPERFARM_THREADS", "WHISPERFARM_BACKEND")
"""The settings' variables for the same."""


def standby_layout(
    argv: Sequence[str], environ: Mapping[str, str], cpus: int | None = None
) -> tuple[int, int] | None:
    """(workers, threads each) to start as standby workers for the command line ``argv``
    (without the program's name): the default local fleet for a ``transcribe`` that
    changes no part of it, else None."""
    if not argv or argv[0] != "transcribe":
        return None
    if any(arg.split("=", 1)[0] in LAYOUT_FLAGS for arg in argv[1:]):
        return None
    if any(name in environ for name in LAYOUT_VARIABLES):
        return None
    return default_workers(cpus)


def main() -> None:
    layout = standby_layout(sys.argv[1:], os.environ)
    standby = StandbyWorkers.start(*layout) if layout else None
    from whisperfarm.cli import app

    try:
        app(obj=standby)
    finally:
        if standby is not None:
            standby.close()
        # The interpreter's last garbage collections at exit walk every object the
        # imports made (typer, FastAPI, pydantic's schemas): 0.15-0.25 s on every command.
        # Frozen objects are skipped; everything is still finalized and flushed.
        gc.freeze()
