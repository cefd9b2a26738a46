"""The ``whisperfarm`` command's entry point: start the local workers' processes of a
transcription before anything heavy is imported, then run the CLI.

For ``transcribe``, the local fleet's layout (``spawn.local_layout``: ``--workers`` and
``--threads``, else WHISPERFARM_WORKERS and WHISPERFARM_THREADS, else the default) is read
off the command line and the environment, and its processes start at once as standby
workers (``spawn.StandbyWorkers``). Their imports then run beside the CLI's (typer, the
coordinator, the ledger: about a second on 2 cores), and the run hands them their orders
when its coordinator is up. A config file that changes the fleet is read only later,
with the settings: the run then takes the standbys that suit it and lets the others go,
which exit at once. No standby starts for ``--backend``, ``--dry-run``, ``--help``, a
value that isn't a whole number, or any other command.

This module imports the standard library and ``whisperfarm.spawn`` only, until the CLI.
"""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Mapping, Sequence

from whisperfarm.spawn import StandbyWorkers, local_layout

NO_STANDBY_FLAGS = ("--backend", "--dry-run", "--help")
"""transcribe's flags that may start no local fleet."""

LAYOUT_FLAGS = {"workers": ("--workers", "-w"), "threads": ("--threads",)}
"""transcribe's flags of the local fleet's layout."""

LAYOUT_VARIABLES = {"workers": "WHISPERFARM_WORKERS", "threads": "WHISPERFARM_THREADS"}
NO_STANDBY_VARIABLES = ("WHISPERFARM_BACKEND",)


def standby_layout(
    argv: Sequence[str], environ: Mapping[str, str], cpus: int | None = None
) -> tuple[int, int] | None:
    """(workers, threads each) to start as standby workers for the command line ``argv``
    (without the program's name): the local fleet of a ``transcribe``, else None."""
    if not argv or argv[0] != "transcribe":
        return None
    args = argv[1:]
    if any(arg.split("=", 1)[0] in NO_STANDBY_FLAGS for arg in args):
        return None
    if any(name in environ for name in NO_STANDBY_VARIABLES):
        return None
    given: dict[str, int | None] = {}
    for field, flags in LAYOUT_FLAGS.items():
        value = _last_value(args, flags)
        if value is None:
            value = environ.get(LAYOUT_VARIABLES[field])
        try:
            given[field] = None if value is None else int(value)
        except ValueError:
            return None  # the CLI will say what is wrong with it
    workers, threads = local_layout(cpus, given["workers"], given["threads"])
    if workers < 1 or threads < 1:
        return None
    return workers, threads


def _last_value(args: Sequence[str], flags: Sequence[str]) -> str | None:
    """The value of the last of ``flags`` in ``args`` (``--flag V``, ``--flag=V``, or
    ``-wV`` for a short one), as the command line's parser takes it; None without one,
    "" for a flag without its value."""
    value = None
    for i, arg in enumerate(args):
        name, equals, attached = arg.partition("=")
        if name in flags:
            value = attached if equals else (args[i + 1] if i + 1 < len(args) else "")
        else:
            for flag in flags:
                if len(flag) == 2 and arg.startswith(flag) and len(arg) > 2:
                    value = arg[2:]
    return value


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
