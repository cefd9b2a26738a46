"""The ``whisperfarm`` command's entry point: start the local workers' processes of a
transcription before anything heavy is imported, then run the CLI.

For ``transcribe``, the local fleet's layout (``spawn.local_layout``: ``--workers`` and
``--threads``, else WHISPERFARM_WORKERS and WHISPERFARM_THREADS, else the default) is read
off the command line, parsed as the CLI's parser will, and off the environment; its
processes start at once as standby workers (``spawn.StandbyWorkers``). Their imports then
run beside the CLI's (typer, the coordinator, the ledger: about a second on 2 cores), and
the run hands them their orders when its coordinator is up. Between the two, once the
settings are read (the command line's model and compute type, then the environment and
the config file, as the CLI reads them), the standbys are told the model to load, which
they do while the CLI starts the run. A config file that changes the fleet is read only
later, with the run's settings: the run then takes the standbys that suit it and ends
the others. No standby starts for ``--backend``, ``--dry-run``,
``--help``, a command line this module can't read for certain (an option it doesn't
know, a value that isn't a whole number), or any other command.

This module imports the standard library and ``whisperfarm.spawn`` only until the
standbys are started; then the settings, to tell them their model; then the CLI.
"""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Mapping, Sequence

from whisperfarm.spawn import StandbyWorkers, local_layout

FLAG_OPTIONS = frozenset(
    {
        *("--dry-run", "--gpu", "--help", "--quiet", "-q", "--yes", "-y"),
        *("--words", "--no-words", "--highlight-words", "--no-highlight-words"),
        *("--vad-filter", "--no-vad-filter"),
    }
)
"""transcribe's options that take no value (a test holds them to the command's own)."""

VALUE_OPTIONS = frozenset(
    {
        *("--workers", "-w", "--threads", "--batch-size", "--model", "-m", "--compute-type"),
        *("--out", "-o", "--format", "-f", "--max-line-width", "--max-line-count"),
        *("--language", "--task", "--initial-prompt", "--hotwords", "--beam-size"),
        *("--temperature", "--host", "--port", "--backend", "--max-machines", "--budget"),
        *("--machine-size", "--region", "--image", "--app", "--advertise-url"),
        *("--reach-timeout", "--latest"),
    }
)
"""transcribe's options that take a value."""

NO_STANDBY_OPTIONS = ("--backend", "--dry-run", "--help", "--gpu")
"""transcribe's options that may start no local fleet."""

LAYOUT_OPTIONS = {"workers": ("--workers", "-w"), "threads": ("--threads",)}
"""transcribe's options of the local fleet's layout."""

MODEL_OPTIONS = {"model": ("--model", "-m"), "compute_type": ("--compute-type",)}
"""transcribe's options of the model its workers load (``Settings`` fields)."""

LAYOUT_VARIABLES = {"workers": "WHISPERFARM_WORKERS", "threads": "WHISPERFARM_THREADS"}
"""The settings' variables for the same, which the options beat."""

NO_STANDBY_VARIABLES = ("WHISPERFARM_BACKEND",)


def standby_layout(
    argv: Sequence[str], environ: Mapping[str, str], cpus: int | None = None
) -> tuple[int, int] | None:
    """(workers, threads each) to start as standby workers for the command line ``argv``
    (without the program's name): a ``transcribe``'s local fleet, else None. None too
    wherever the command line isn't plainly one the CLI will run with that fleet."""
    if not argv or argv[0] != "transcribe":
        return None
    options = _options(argv[1:])
    if options is None or any(name in options for name in NO_STANDBY_OPTIONS):
        return None
    environ = {name.upper(): value for name, value in environ.items()}  # as settings read it
    if any(name in environ for name in NO_STANDBY_VARIABLES):
        return None
    given: list[int | None] = []
    for field, names in LAYOUT_OPTIONS.items():
        value = _last(options, names)
        if value is None:
            value = environ.get(LAYOUT_VARIABLES[field])
        try:
            given.append(None if value is None else int(value))
        except ValueError:
            return None  # the CLI will say what is wrong with it
    workers, threads = local_layout(cpus, *given)
    if workers < 1 or threads < 1:
        return None
    return workers, threads


def preload_env(argv: Sequence[str], threads: int) -> dict[str, str] | None:
    """The model part of a ``transcribe``'s local workers' orders (WHISPERFARM_MODEL,
    WHISPERFARM_COMPUTE_TYPE and WHISPERFARM_THREADS, as ``LocalFleet`` writes them) for
    the command line ``argv``, with the settings read as the CLI reads them (the command
    line, the environment, the config file). None where the run will take no standby of
    ``threads`` threads (a config file that says Fly, or another layout) or the settings
    can't be read (the CLI will say why)."""
    from whisperfarm.errors import UsageError
    from whisperfarm.settings import load_settings
    from worker.config import WorkerConfig

    options = _options(argv[1:]) or {}
    given = {**LAYOUT_OPTIONS, **MODEL_OPTIONS}
    try:
        settings = load_settings(**{field: _last(options, names) for field, names in given.items()})
    except UsageError:
        return None
    workers, layout_threads = local_layout(None, settings.workers, settings.threads)
    if settings.backend != "local" or workers < 1 or layout_threads != threads:
        return None
    config = WorkerConfig.for_worker(
        threads=threads, preload_model=settings.model, compute_type=settings.compute_type
    )
    return config.to_env()


def _last(options: dict[str, str], names: Sequence[str]) -> str | None:
    """The value last given to any of the option's ``names``."""
    values = [value for name, value in options.items() if name in names]
    return values[-1] if values else None


def _options(args: Sequence[str]) -> dict[str, str] | None:
    """The options in ``args`` as the command line's parser reads them, each with its
    last value ("" for a flag), in the order last given; None at anything it can't be
    sure of (an option this module doesn't know, a flag given a value)."""
    found: dict[str, str] = {}

    def give(name: str, value: str) -> None:
        found.pop(name, None)  # to the end: the order the options were last given
        found[name] = value

    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg == "--":
            break  # the rest are inputs
        if not arg.startswith("-") or arg == "-":
            continue  # an input ("-" is standard input)
        if arg.startswith("--"):
            name, equals, value = arg.partition("=")
            if name in FLAG_OPTIONS and not equals:
                give(name, "")
            elif name in VALUE_OPTIONS:
                if not equals:
                    if i >= len(args):
                        return None
                    value, i = args[i], i + 1
                give(name, value)
            else:
                return None
            continue
        # -q, -w2, -qw2, -w 2: short options, clustered as the parser allows
        for at in range(1, len(arg)):
            name = "-" + arg[at]
            if name in FLAG_OPTIONS:
                give(name, "")
            elif name in VALUE_OPTIONS:
                value = arg[at + 1 :]
                if not value:
                    if i >= len(args):
                        return None
                    value, i = args[i], i + 1
                give(name, value)
                break
            else:
                return None
    return found


def main() -> None:
    layout = standby_layout(sys.argv[1:], os.environ)
    standby = StandbyWorkers.start(*layout) if layout else None
    try:
        if standby is not None and layout is not None:
            try:
                env = preload_env(sys.argv[1:], threads=layout[1])
            except Exception:  # preloading only saves time; the CLI reads the settings next
                env = None
            if env is not None:
                standby.preload(env)
        from whisperfarm.cli import app

        app(obj=standby)
    finally:
        if standby is not None:
            standby.close()
        # The interpreter's last garbage collections at exit walk every object the
        # imports made (typer, FastAPI, pydantic's schemas): 0.15-0.25 s on every command.
        # Frozen objects are skipped; everything is still finalized and flushed.
        gc.freeze()
