"""``status``: what the farm is doing, read from the ledger (no coordinator needed)."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from whisperfarm.cli.root import app, friendly, out

# The clock the snapshot is taken at; tests pin it.
clock = time.time


@app.command()
@friendly
def status(
    episode: Annotated[
        str | None,
        typer.Argument(
            help="Show only this episode (id, start of the id, or name), with its chunks."
        ),
    ] = None,
    once: Annotated[
        bool, typer.Option("--once", metavar="", help="Print one snapshot and exit.")
    ] = False,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json", metavar="", help="Print one snapshot as JSON (for scripts) and exit."
        ),
    ] = False,
    all_episodes: Annotated[
        bool,
        typer.Option("--all", metavar="", help="Every episode in the ledger, not just the run's."),
    ] = False,
    interval: Annotated[
        float, typer.Option(min=0.1, help="Seconds between refreshes of the live view.")
    ] = 0.25,
) -> None:
    """Show runs, episodes, workers, Fly machines and spend, live, until Ctrl-C.

    It reads the ledger, so it works from another terminal while 'transcribe'
    or 'serve' runs. Prints one snapshot when stdout is not a terminal.
    Workers silent for a lease (60 s by default) are flagged stale.

    Example: `whisperfarm status`  ·  `whisperfarm status interview --once`
    """
    from whisperfarm.settings import load_settings
    from whisperfarm.status import StatusReader, StatusSnapshot
    from whisperfarm.status_view import render_status, watch

    settings = load_settings()
    reader = StatusReader(settings.ledger_path, stale_after=settings.lease_seconds, clock=clock)
    try:
        episode_id = reader.resolve(episode) if episode is not None else None

        def read() -> StatusSnapshot:
            return reader.read(episode_id, all_episodes=all_episodes)

        if as_json:
            typer.echo(read().to_json())
        elif once or not out.is_terminal:
            out.print(render_status(read(), out.width), soft_wrap=False)  # laid out to fit
        else:
            watch(out, read, interval=interval)
    finally:
        reader.close()
